"""The lazy filesystem through its real interface: `lazypull mount`, real FUSE, real registry."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.format import open_layer
from lazypull.imagefs.rootfs import mount_stats
from lazypull.oci import mediatypes as mt
from lazypull.registry.options import RegistryOptions
from lazypull.registry.repository import RegistryStore
from tests.e2e.interop import snapshot_tree
from tests.support.images import Entry, busybox_layer, write_image
from tests.support.net import wait_for
from tests.support.processes import layer_servers
from tests.support.proxy import Proxy, start_proxy
from tests.support.registry import Registry, start_registry

pytestmark = pytest.mark.e2e

BIG = os.urandom(6 << 20)  # incompressible: fetched bytes ~ file bytes


def layers() -> list[list[Entry]]:
    return [
        busybox_layer(),
        [
            Entry("data", "dir", mode=0o755),
            Entry("data/big.bin", data=BIG, mode=0o640, uid=1000, gid=1000),
            Entry("data/hello.txt", data=b"hello\n", xattrs={"user.note": "kept"}),
            Entry("data/hard", "hardlink", link="data/hello.txt"),
            Entry("data/sym", "symlink", link="hello.txt"),
            Entry("data/null", "char", devmajor=1, devminor=3, mode=0o666),
            Entry("data/fifo", "fifo"),
            Entry("data/suid", data=b"#!/bin/sh\n", mode=0o4755),
            Entry("data/gone", data=b"removed above"),
            Entry("data/opq", "dir"),
            Entry("data/opq/lower", data=b"lower"),
            Entry("data/other.txt", data=b"other file\n" * 1000),
        ],
        [
            Entry("data/.wh.gone"),
            Entry("data/opq", "dir"),
            Entry("data/opq/.wh..wh..opq"),
            Entry("data/opq/upper", data=b"upper"),
            Entry("data/top.txt", data=b"third layer\n"),
        ],
    ]


@dataclass
class Env:
    registry: Registry
    proxy: Proxy
    root: Path
    ref: str  # eStargz image, through the counting proxy
    plain_ref: str  # the original gzip image

    def mount(self, mnt: Path, *extra: str) -> None:
        args = [
            "mount",
            "--daemon",
            "--plain-http",
            "--cache-dir",
            str(self.root / "cache" / mnt.name),
            "--state-dir",
            str(self.root / "state"),
            "--fetch-timeout",
            "5",
            *extra,
            self.ref,
            str(mnt),
        ]
        assert main(args) == 0

    def umount(self, mnt: Path) -> None:
        assert main(["umount", "--state-dir", str(self.root / "state"), str(mnt)]) == 0


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    reg = start_registry(tmp_path / "registry")
    proxy = start_proxy(reg.url)
    try:
        write_image(tmp_path / "src", layers())
        plain = f"{reg.host}/lazy/img:orig"
        assert main(["copy", "--plain-http", f"oci:{tmp_path / 'src'}:latest", plain]) == 0
        assert (
            main(["convert", "--plain-http", "--oci", "--chunk-size", "1048576", plain, f"{reg.host}/lazy/img:esgz"])
            == 0
        )
        yield Env(reg, proxy, tmp_path, f"{proxy.host}/lazy/img:esgz", plain)
    finally:
        for m in _our_mounts(tmp_path):
            subprocess.run(["umount", "-l", m], capture_output=True)
        proxy.stop()
        reg.stop()


def _our_mounts(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(root))]


def _mount_procs(root: Path) -> list[int]:
    return layer_servers(root)


def test_mounted_tree_equals_the_source_image(env: Env, tmp_path: Path) -> None:
    assert main(["unpack", "--plain-http", env.plain_ref, str(tmp_path / "truth")]) == 0
    mnt = tmp_path / "mnt"
    env.mount(mnt)
    try:
        assert snapshot_tree(mnt) == snapshot_tree(tmp_path / "truth")
        assert not (mnt / "data/gone").exists() and (mnt / "data/opq/upper").exists()
        assert not (mnt / "data/opq/lower").exists()
        assert os.stat(mnt / "data/hard").st_ino == os.stat(mnt / "data/hello.txt").st_ino
    finally:
        env.umount(mnt)
    assert not _our_mounts(tmp_path)
    # the layer server exits just after its last reply (it answers before it goes)
    wait_for(lambda: not _mount_procs(tmp_path), 10, "the idle layer server to exit")
    assert not (tmp_path / "state").exists() or {p.name for p in (tmp_path / "state").iterdir()} <= {"fsd.log"}


def test_reading_one_file_fetches_about_that_file(env: Env, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    env.proxy.reset_counters()
    env.mount(mnt, "--no-background-fetch", "--no-prefetch")
    try:
        after_mount = env.proxy.blob_bytes()
        store = RegistryStore.open(env.ref, RegistryOptions(plain_http=True))
        from lazypull.oci.types import Manifest

        d = store.resolve()
        layer = Manifest.parse(store.fetch(d), d.media_type).layers[1]
        idx = open_layer(store.blob_source(layer), toc_digest=layer.annotations[mt.ANNOTATION_TOC_DIGEST])
        big = idx.lookup("data/big.bin")
        assert big is not None
        file_compressed = big.chunks[-1].blob_end - big.chunks[0].blob_offset
        total_layers = sum(x.size for x in Manifest.parse(store.fetch(d), d.media_type).layers)
        assert after_mount < total_layers * 0.05  # footers and TOCs only
        env.proxy.reset_counters()
        assert hashlib.sha256((mnt / "data/big.bin").read_bytes()).digest() == hashlib.sha256(BIG).digest()
        fetched = env.proxy.blob_bytes()
        assert file_compressed <= fetched <= file_compressed * 1.05 + 4096, (fetched, file_compressed)
        env.proxy.reset_counters()
        (mnt / "data/big.bin").read_bytes()  # cached now
        assert env.proxy.blob_bytes() == 0
    finally:
        env.umount(mnt)


def test_tampered_blob_gives_eio_for_that_file_only(env: Env, tmp_path: Path) -> None:
    store = RegistryStore.open(env.ref, RegistryOptions(plain_http=True))
    from lazypull.oci.types import Manifest

    d = store.resolve()
    layer = Manifest.parse(store.fetch(d), d.media_type).layers[1]
    idx = open_layer(store.blob_source(layer), toc_digest=layer.annotations[mt.ANNOTATION_TOC_DIGEST])
    other = idx.lookup("data/other.txt")
    assert other is not None
    path = env.registry.blob_data_path(layer.digest)
    data = bytearray(path.read_bytes())
    data[other.chunks[0].blob_offset + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    mnt = tmp_path / "mnt"
    env.mount(mnt, "--no-background-fetch", "--no-prefetch")
    try:
        with pytest.raises(OSError) as ei:
            (mnt / "data/other.txt").read_bytes()
        assert ei.value.errno == errno.EIO
        assert (mnt / "data/hello.txt").read_bytes() == b"hello\n"
        assert hashlib.sha256((mnt / "data/big.bin").read_bytes()).digest() == hashlib.sha256(BIG).digest()
    finally:
        env.umount(mnt)


def test_registry_down_cached_reads_work_uncached_fail_fast(env: Env, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    env.mount(mnt, "--no-background-fetch", "--no-prefetch")
    try:
        assert (mnt / "data/hello.txt").read_bytes() == b"hello\n"
        env.proxy.faults.match = "/v2/"
        env.proxy.faults.resets = 10**6  # the registry is unreachable from now on
        assert (mnt / "data/hello.txt").read_bytes() == b"hello\n"
        t0 = time.monotonic()
        with pytest.raises(OSError) as ei:
            (mnt / "data/big.bin").read_bytes()
        assert ei.value.errno == errno.EIO
        assert time.monotonic() - t0 < 30
    finally:
        env.proxy.faults.resets = 0
        env.umount(mnt)
    assert not _mount_procs(tmp_path)


def wait_background_done(mnt: Path, state: Path) -> list[dict[str, object]]:
    """Every lazy layer of the mount has fetched everything; returns the stats rows."""
    wait_for(
        lambda: all(r.get("background_done") for r in mount_stats(mnt, state) if r.get("lazy")), 30, "background fetch"
    )
    return mount_stats(mnt, state)


def test_prefetch_and_stats(env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mnt = tmp_path / "mnt"
    env.mount(mnt)
    try:
        wait_background_done(mnt, tmp_path / "state")
        env.proxy.reset_counters()
        assert hashlib.sha256((mnt / "data/big.bin").read_bytes()).digest() == hashlib.sha256(BIG).digest()
        assert env.proxy.blob_bytes() == 0  # background fetch had everything
        assert main(["mount", "--stats", "--state-dir", str(tmp_path / "state"), str(mnt)]) == 0
    finally:
        env.umount(mnt)


def test_passthrough_serves_cached_files_without_the_server(env: Env, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    env.mount(mnt, "--passthrough")
    try:
        rows = wait_background_done(mnt, tmp_path / "state")
        lazy = [r for r in rows if r.get("lazy")]
        if not any(r.get("passthrough") for r in lazy):
            pytest.skip("this kernel does not offer FUSE passthrough")
        served = sum(int(r.get("bytes_served", 0)) for r in lazy)
        assert hashlib.sha256((mnt / "data/big.bin").read_bytes()).digest() == hashlib.sha256(BIG).digest()
        time.sleep(1.2)  # stats are published every second
        rows = mount_stats(mnt, tmp_path / "state")
        assert sum(int(r.get("bytes_served", 0)) for r in rows if r.get("lazy")) == served  # kernel read the cache file
        assert sum(int(r.get("passthrough_files", 0)) for r in rows) >= 1
        assert (mnt / "data/hello.txt").read_bytes() == b"hello\n"
    finally:
        env.umount(mnt)


def test_foreground_mount_cleans_up_on_ctrl_c(env: Env, tmp_path: Path) -> None:
    import signal
    import sys

    mnt = tmp_path / "fg"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lazypull.cli.main",
            "mount",
            "--plain-http",
            "--cache-dir",
            str(tmp_path / "fgcache"),
            "--state-dir",
            str(tmp_path / "fgstate"),
            env.ref,
            str(mnt),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not (mnt / "data/hello.txt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
        assert (mnt / "data/hello.txt").read_bytes() == b"hello\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not _our_mounts(tmp_path)
    # the layer server exits just after its last reply (it answers before it goes)
    wait_for(lambda: not _mount_procs(tmp_path), 10, "the idle layer server to exit")


def test_full_cache_disk_still_serves_verified_reads(env: Env, tmp_path: Path) -> None:
    tiny = tmp_path / "tinycache"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(tiny)], check=True)
    mnt = tmp_path / "mnt"
    try:
        env.mount(mnt, "--no-background-fetch", "--cache-dir", str(tiny))
        try:
            assert hashlib.sha256((mnt / "data/big.bin").read_bytes()).digest() == hashlib.sha256(BIG).digest()
            assert (mnt / "data/other.txt").read_bytes() == b"other file\n" * 1000
        finally:
            env.umount(mnt)
    finally:
        subprocess.run(["umount", str(tiny)], check=False)


def test_passthrough_never_serves_a_corrupted_cache_file(env: Env, tmp_path: Path) -> None:
    """A byte flipped in a whole-file cache entry (the file the kernel reads by itself with
    passthrough) is found when the file is registered again: dropped, rebuilt, never served."""
    mnt = tmp_path / "mnt"
    cache = env.root / "cache" / mnt.name
    env.mount(mnt, "--passthrough")
    try:
        rows = wait_background_done(mnt, tmp_path / "state")
        if not any(r.get("passthrough") for r in rows if r.get("lazy")):
            pytest.skip("this kernel does not offer FUSE passthrough")
        assert hashlib.sha256((mnt / "data/big.bin").read_bytes()).digest() == hashlib.sha256(BIG).digest()
    finally:
        env.umount(mnt)
    whole = cache / hashlib.sha256(BIG).hexdigest()[:2] / hashlib.sha256(BIG).hexdigest()
    assert whole.exists()  # built (and verified) when the file was first opened
    data = bytearray(whole.read_bytes())
    data[12345] ^= 0xFF
    whole.write_bytes(bytes(data))
    env.mount(mnt, "--passthrough")
    try:
        assert hashlib.sha256((mnt / "data/big.bin").read_bytes()).digest() == hashlib.sha256(BIG).digest()
        rows = mount_stats(mnt, tmp_path / "state")
        assert sum(int(r.get("verify_errors", 0)) for r in rows if r.get("lazy")) >= 1
        assert sum(int(r.get("passthrough_files", 0)) for r in rows) >= 1
        assert hashlib.sha256(whole.read_bytes()).digest() == hashlib.sha256(BIG).digest()  # rebuilt
    finally:
        env.umount(mnt)
