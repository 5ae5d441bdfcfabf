"""Isolation end to end: images whose prefetches hang on one registry do not slow down a
container of another image (real daemon, layer server, containerd and runc)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from lazypull.cli.main import main
from tests.support.containerd import start_containerd
from tests.support.daemon import Daemon, start_daemon
from tests.support.images import Entry, busybox_layer, write_image
from tests.support.net import free_port
from tests.support.proxy import start_proxy
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

PREFETCH_TIMEOUT = 10.0


def _push(reg: Registry, root: Path, name: str, layers: list[list[Entry]], prioritized: list[str]) -> str:
    """An eStargz image on *reg* whose *prioritized* files are prefetched at mount."""
    src = root / f"src-{name}"
    write_image(src, layers, cmd=["/bin/sh"])
    plain = f"{reg.host}/iso/{name}:orig"
    assert main(["copy", "--plain-http", f"oci:{src}:latest", plain]) == 0
    record = root / f"{name}.record"
    record.write_text("".join(json.dumps({"path": p}) + "\n" for p in prioritized))
    ref = f"{reg.host}/iso/{name}:esgz"
    assert main(["convert", "--plain-http", "--oci", "--record-in", str(record), plain, ref]) == 0
    return ref


def test_a_container_starts_at_once_while_other_images_prefetches_hang(tmp_path: Path, registry: Registry) -> None:
    hung_refs = []
    for name in ("a", "b"):  # two images of three layers each, on the registry that will hang
        layers = [
            [Entry(f"{name}{i}", "dir", mode=0o755), Entry(f"{name}{i}/f", data=os.urandom(50_000))] for i in range(3)
        ]
        hung_refs.append(_push(registry, tmp_path, name, layers, [f"/{name}{i}/f" for i in range(3)]))
    ok = _push(
        registry,
        tmp_path,
        "ok",
        [busybox_layer(), [Entry("data", "dir", mode=0o755), Entry("data/hello.txt", data=b"hello\n")]],
        ["/data/hello.txt", "/bin/busybox"],
    )
    proxy = start_proxy(registry.url)  # the images that hang are pulled through it (another host)
    cfg = (
        f'plain_http_hosts = ["{proxy.host}", "{registry.host}"]\nno_background_fetch = true\n'
        f"prefetch_timeout_sec = {PREFETCH_TIMEOUT}\n[blob]\nfetching_timeout_sec = 60\n"
    )
    daemon = start_daemon(tmp_path / "daemon", cfg)
    cd = None
    try:
        cd = start_containerd(tmp_path / "containerd", proxy_plugins={"lazypull": daemon.address})
        proxy.faults.match, proxy.faults.stall, proxy.faults.inner_ranges = "/blobs/", "body", True
        for ref in hung_refs:
            cd.ctr(
                "image",
                "rpull",
                "--plain-http",
                "--snapshotter",
                "lazypull",
                ref.replace(registry.host, proxy.host),
                tool="ctr-remote",
            )
        cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", ok, tool="ctr-remote")
        rows = daemon.fsd().stats()["layers"]
        assert sum(not r["prefetch_done"] for r in rows) >= 6, rows  # the hung images' prefetches hang
        t0 = time.monotonic()
        out = cd.ctr("run", "--rm", "--snapshotter", "lazypull", ok, "iso1", "/bin/cat", "/data/hello.txt")
        took = time.monotonic() - t0
        assert out.stdout == "hello\n"
        # Before: the create waited for the prefetch pool (full of hung prefetches) the whole
        # prefetch timeout, several times over.
        assert took < PREFETCH_TIMEOUT / 2, (took, daemon.log())
    finally:
        proxy.heal()
        if cd is not None:
            cd.stop()
        _stop(daemon, tmp_path)
        proxy.stop()


def test_a_hung_registry_does_not_hold_up_reads_from_another(tmp_path: Path, registry: Registry) -> None:
    files = {f"a/f{i}.bin": os.urandom(300_000) for i in range(24)}
    hung = _push(
        registry, tmp_path, "h", [[Entry("a", "dir", mode=0o755), *(Entry(n, data=d) for n, d in files.items())]], []
    )
    other = _push(registry, tmp_path, "o", [[Entry("b", "dir", mode=0o755), Entry("b/g", data=os.urandom(4096))]], [])
    proxy = start_proxy(registry.url)  # the registry that hangs: another host than *other*'s
    cfg = (
        f'plain_http_hosts = ["{proxy.host}", "{registry.host}"]\nno_background_fetch = true\n'
        "[blob]\nfetching_timeout_sec = 30\n"
    )
    daemon = start_daemon(tmp_path / "daemon", cfg)
    cd = None
    readers: list[threading.Thread] = []
    try:
        cd = start_containerd(tmp_path / "containerd", proxy_plugins={"lazypull": daemon.address})
        for ref in (hung.replace(registry.host, proxy.host), other):
            cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", ref, tool="ctr-remote")
        mps = [Path(r["mountpoint"]) for r in daemon.layers()]
        [a] = [m for m in mps if (m / "a").is_dir()]
        [b] = [m for m in mps if (m / "b").is_dir()]
        proxy.faults.match, proxy.faults.stall, proxy.faults.inner_ranges = "/blobs/", "body", True
        readers = [
            threading.Thread(target=lambda n=n: subprocess.run(["cat", str(a / n)], capture_output=True), daemon=True)
            for n in list(files)[:20]
        ]
        for t in readers:
            t.start()
        time.sleep(1.0)  # 20 reads in flight on the hung registry
        assert sum(t.is_alive() for t in readers) == 20
        t0 = time.monotonic()
        res = subprocess.run(["cat", str(b / "b/g")], capture_output=True, timeout=60)
        took = time.monotonic() - t0
        assert res.returncode == 0 and len(res.stdout) == 4096
        # Before: behind the 16 data threads the hung reads held, until their 30 s timeout.
        assert took < 10, (took, daemon.log())
    finally:
        proxy.heal()
        for t in readers:
            t.join(60)
        if cd is not None:
            cd.stop()
        _stop(daemon, tmp_path)
        proxy.stop()


def _stop(daemon: Daemon, root: Path) -> None:
    """The daemon, then the layer server it leaves running by design, then leftover mounts."""
    daemon.stop()
    daemon.stop_layers()
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if str(root) in line.split()[4]]
    for m in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


def test_a_layer_over_its_images_index_memory_is_pulled_in_full_and_says_why(
    tmp_path: Path, registry: Registry
) -> None:
    """One image's share of the layer server's index memory: its layer whose TOC would take
    more is refused at once, the daemon pulls that layer in full, the container runs, and
    the operator sees why (status, metrics)."""
    wide = [Entry("w", "dir", mode=0o755), *(Entry(f"w/{i}", data=b"") for i in range(30_000))]
    ref = _push(
        registry, tmp_path, "wide",
        [busybox_layer(), wide, [Entry("data", "dir", mode=0o755), Entry("data/hello.txt", data=b"hello\n")]],
        [],
    )
    port = free_port()
    cfg = (
        f'plain_http_hosts = ["{registry.host}"]\nno_background_fetch = true\nmetrics_address = "127.0.0.1:{port}"\n'
        "[cache]\nindex_memory_bytes = 268435456\nimage_index_memory_bytes = 20971520\n"  # 256 MB, 20 MB
    )
    daemon = start_daemon(tmp_path / "daemon", cfg)
    cd = None
    try:
        cd = start_containerd(tmp_path / "containerd", proxy_plugins={"lazypull": daemon.address})
        cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", ref, tool="ctr-remote")
        out = cd.ctr("run", "--rm", "--snapshotter", "lazypull", ref, "wide1", "/bin/sh", "-c",
                     "cat /data/hello.txt; ls /w | wc -l")
        assert out.stdout.split() == ["hello", "30000"]
        im = daemon.fsd().stats()["index_memory"]
        # refused once per try: a mount ahead of containerd's Prepare may have tried it first
        assert im["refused"] >= 1 and im["in_use"] == 0 and im["per_image"] == 20 << 20
        assert len(daemon.layers()) == 2  # busybox and data lazily; the wide layer pulled in full
        log = daemon.log()
        assert "over the per-image index memory of 20 MB (cache.image_index_memory_bytes)" in log
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        fell = re.search(r'^lazypull_fallback_total\{reason="mount_failed"\} (\S+)$', metrics, re.M)
        assert fell is not None and float(fell.group(1)) >= 1, metrics
        refused = re.search(r"^lazypull_index_memory_refused_total (\S+)$", metrics, re.M)
        assert refused is not None and float(refused.group(1)) >= 1
    finally:
        if cd is not None:
            cd.stop()
        _stop(daemon, tmp_path)
