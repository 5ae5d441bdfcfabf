"""A misbehaving registry, end to end: reads through a real `lazypull mount` and Prepare
through the real daemon and containerd end within their deadlines (plus a second)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazypull.cli.main import main
from tests.support.containerd import start_containerd
from tests.support.daemon import start_daemon
from tests.support.images import Entry, write_image
from tests.support.proxy import Proxy, start_proxy, unaccepting_port
from tests.support.registry import Registry, start_registry

pytestmark = pytest.mark.e2e

FILES = {f"data/f{i}.bin": os.urandom(300_000) for i in range(6)}
FETCH_DEADLINE = 3.0
SLACK = 1.0


@dataclass
class World:
    registry: Registry
    proxy: Proxy
    root: Path
    ref: str  # eStargz image through the fault proxy


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    reg = start_registry(tmp_path / "registry")
    proxy = start_proxy(reg.url)
    try:
        write_image(
            tmp_path / "src",
            [[Entry("data", "dir", mode=0o755), *(Entry(n, data=d) for n, d in FILES.items())]],
        )
        plain = f"{reg.host}/faulty/img:orig"
        assert main(["copy", "--plain-http", f"oci:{tmp_path / 'src'}:latest", plain]) == 0
        assert main(["convert", "--plain-http", "--oci", plain, f"{reg.host}/faulty/img:esgz"]) == 0
        yield World(reg, proxy, tmp_path, f"{proxy.host}/faulty/img:esgz")
    finally:
        for m in _our_mounts(tmp_path):
            subprocess.run(["umount", "-l", m], capture_output=True)
        proxy.stop()
        reg.stop()


def _our_mounts(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(root))]


@pytest.fixture
def mounted(world: World) -> Iterator[Path]:
    mnt = world.root / "mnt"
    state = str(world.root / "state")
    args = ["mount", "--daemon", "--plain-http", "--no-prefetch", "--no-background-fetch"]
    args += ["--cache-dir", str(world.root / "cache"), "--state-dir", state]
    assert main([*args, "--fetch-timeout", str(FETCH_DEADLINE), world.ref, str(mnt)]) == 0
    try:
        yield mnt
    finally:
        assert main(["umount", "--state-dir", state, str(mnt)]) == 0


def timed_cat(path: Path) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    t0 = time.monotonic()
    res = subprocess.run(["cat", str(path)], capture_output=True, timeout=FETCH_DEADLINE * 10)
    return time.monotonic() - t0, res


@pytest.mark.parametrize(
    "mode",
    [{"trickle_bps": 1024}, {"stall": "accept"}, {"stall": "body"}, {"resets": 10**6}],
    ids=["trickle-1KBps", "stall-accept", "stall-headers", "reset"],
)
def test_read_from_faulty_registry_is_eio_within_the_deadline_then_recovers(
    world: World, mounted: Path, mode: dict[str, object]
) -> None:
    name = "data/f1.bin"
    world.proxy.faults.match = "/blobs/"
    for k, v in mode.items():
        setattr(world.proxy.faults, k, v)
    took, res = timed_cat(mounted / name)
    assert res.returncode != 0 and b"Input/output error" in res.stderr, res
    assert took < FETCH_DEADLINE + SLACK, took
    world.proxy.heal()
    world.proxy.faults.resets = 0
    time.sleep(2.0)  # a failed chunk fails fast for a moment (the kernel's retry), then is fetched again
    took, res = timed_cat(mounted / name)
    assert res.returncode == 0 and res.stdout == FILES[name]


def test_stale_keepalive_connection_costs_no_read_timeout(world: World, mounted: Path) -> None:
    assert (mounted / "data/f2.bin").read_bytes() == FILES["data/f2.bin"]  # a pooled connection exists
    world.proxy.faults.stale_after = 1  # ... and the registry side silently forgot it
    took, res = timed_cat(mounted / "data/f3.bin")
    assert res.returncode == 0 and res.stdout == FILES["data/f3.bin"]
    assert took < FETCH_DEADLINE + SLACK, took  # the 2 s stale bound, then a new connection


# -- Prepare through the real daemon and containerd ----------------------------------------
RESOLVE_TIMEOUT = 4.0


@pytest.fixture
def three_layers(world: World) -> str:
    """An eStargz image of three layers (three lazy Prepares), through the fault proxy."""
    src = world.root / "src3"
    write_image(
        src,
        [
            [Entry("a", "dir", mode=0o755), Entry("a/one", data=os.urandom(50_000))],
            [Entry("b", "dir", mode=0o755), Entry("b/two", data=os.urandom(50_000))],
            [Entry("c", "dir", mode=0o755), Entry("c/three", data=os.urandom(50_000))],
        ],
    )
    plain = f"{world.registry.host}/faulty/three:orig"
    assert main(["copy", "--plain-http", f"oci:{src}:latest", plain]) == 0
    assert main(["convert", "--plain-http", "--oci", plain, f"{world.registry.host}/faulty/three:esgz"]) == 0
    return f"{world.proxy.host}/faulty/three:esgz"


@pytest.mark.parametrize("fault", ["stall", "stall-blobs", "never-accepts", "never-accepts-hosts-toml"])
def test_prepare_against_unresponsive_registry_falls_back_within_the_bound(
    world: World, three_layers: str, tmp_path: Path, fault: str
) -> None:
    with contextlib.ExitStack() as stack:
        cfg = f'plain_http_hosts = ["{world.proxy.host}"]\nno_background_fetch = true\n'
        cfg += f"[resolver]\ntimeout_sec = {RESOLVE_TIMEOUT}\nfailure_ttl_sec = 60\n"
        if fault == "never-accepts":
            dead = stack.enter_context(unaccepting_port())
            cfg += f'[[resolver.host."{world.proxy.host}".mirrors]]\nhost = "{dead}"\ninsecure = true\n'
        elif fault == "never-accepts-hosts-toml":  # the same dead mirror, from containerd's host directory
            dead = stack.enter_context(unaccepting_port())
            hosts = tmp_path / "certs.d" / world.proxy.host
            hosts.mkdir(parents=True)
            (hosts / "hosts.toml").write_text(f'server = "http://{world.proxy.host}"\n[host."http://{dead}"]\n')
            cfg += f'[registry]\nconfig_path = "{tmp_path / "certs.d"}"\n'
        else:
            world.proxy.faults.agent = "lazypull"  # containerd's own requests still get answers
            world.proxy.faults.stall = "accept"
            if fault == "stall-blobs":  # the manifest arrives, the layers' TOCs never do
                world.proxy.faults.match = "/blobs/"
        daemon = start_daemon(tmp_path / "daemon", cfg)
        stack.callback(daemon.stop_layers)
        stack.callback(daemon.stop)
        cd = start_containerd(tmp_path / "containerd", proxy_plugins={"lazypull": daemon.address})
        stack.callback(cd.stop)
        t0 = time.monotonic()
        cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", three_layers, tool="ctr-remote")
        took = time.monotonic() - t0
        log = daemon.log()
        if fault.startswith("never-accepts"):  # a dead mirror: the registry itself within the bound
            assert "mounted lazily" in log and took < 3 * RESOLVE_TIMEOUT, (took, log)
            return
        warnings = [line for line in log.splitlines() if "WARNING" in line and "normal" in line]
        assert len(warnings) == 1, log  # one lookup waited; the other layers used the remembered failure
        assert "faulty/three" in warnings[0]
        assert "mounted lazily" not in log  # every layer was pulled normally
        # Three layers that each waited for the deadline would take 3 x 4 s at least.
        assert took < 3 * RESOLVE_TIMEOUT, (took, log)
        out = cd.ctr("run", "--rm", "--snapshotter", "lazypull", three_layers, "fb1", "/bin/true", check=False)
        assert "not found" not in out.stderr
