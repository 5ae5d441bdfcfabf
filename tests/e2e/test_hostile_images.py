"""The hostile-image corpus through ``lazypull mount`` (real FUSE, overlayfs, mount processes):
each crafted image fails to mount with one line, touches nothing outside its state and
cache directories, and leaves no mount or process behind."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hostile import (
    CliRun,
    CraftedLayer,
    assert_one_line_error,
    esgz_layer,
    run_cli,
    tar_layer,
    write_crafted_image,
    zeros_member,
)
from tests.support.images import Entry, busybox_layer
from tests.support.processes import layer_servers
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "keep.txt").write_text("keep")
    (tmp_path / "keep.txt").write_text("keep")
    try:
        yield tmp_path
    finally:
        for m in _mounts_under(tmp_path):
            subprocess.run(["umount", "-l", m], capture_output=True)


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(root))]


def _mount_procs(root: Path) -> list[int]:
    return layer_servers(root)


def mount(root: Path, ref: str, *extra: str) -> CliRun:
    args = ["mount", "--daemon", "--cache-dir", str(root / "cache"), "--state-dir", str(root / "state")]
    return run_cli([*args, "--fetch-timeout", "20", *extra, ref, str(root / "mnt")], timeout=90)


def assert_clean(root: Path) -> None:
    assert (root / "keep.txt").read_text() == "keep"
    assert (root / "state" / "keep.txt").read_text() == "keep"
    assert not _mounts_under(root), _mounts_under(root)
    assert not _mount_procs(root), "a layer process was left running"


def test_traversal_digest_cannot_reach_host_files(root: Path) -> None:
    victim = root / "victim"
    victim.write_bytes(b"host file")
    layer = CraftedLayer()
    layer.file("etc/passwd", b"root:x:0:0\n", chunkDigest=f"sha256:/../../{victim}")
    ref = write_crafted_image(root / "img", [esgz_layer(*layer.blob())])
    for extra in ((), ("--passthrough",)):
        assert_one_line_error(mount(root, ref, *extra), "chunkDigest: malformed digest")
        assert_clean(root)
    assert victim.read_bytes() == b"host file"


@pytest.mark.parametrize("name", [".wh...", ".wh..", ".wh.", "etc/.wh..."])
def test_whiteout_escape_in_an_unpacked_tar_layer(root: Path, name: str) -> None:
    """Layers without a TOC are unpacked by the mount: their whiteouts go through the same check."""
    ref = write_crafted_image(root / "img", [tar_layer(busybox_layer()), tar_layer([Entry(name)])])
    assert_one_line_error(mount(root, ref), "invalid whiteout")
    assert_clean(root)


def test_whiteout_escape_in_an_estargz_layer(root: Path) -> None:
    layer = CraftedLayer()
    layer.add(name=".wh...", type="reg")
    ref = write_crafted_image(root / "img", [tar_layer(busybox_layer()), esgz_layer(*layer.blob())])
    assert_one_line_error(mount(root, ref), "invalid whiteout")
    assert_clean(root)


@pytest.mark.parametrize("links", [[("a", "b"), ("b", "a")], [("a", "a")], [("a", "b"), ("b", "gone")]])
def test_hardlink_cycles_do_not_spin(root: Path, links: list[tuple[str, str]]) -> None:
    layer = CraftedLayer()
    for name, target in links:
        layer.add(name=name, type="hardlink", linkName=target)
    ref = write_crafted_image(root / "img", [esgz_layer(*layer.blob())])
    assert_one_line_error(mount(root, ref), "hardlink")
    assert_clean(root)
    tar = write_crafted_image(root / "tar", [tar_layer([Entry(n, "hardlink", link=t) for n, t in links])])
    assert_one_line_error(mount(root, tar), "hardlink")
    assert_clean(root)


def test_decompression_bomb_is_refused_at_mount(root: Path) -> None:
    layer = CraftedLayer()
    off = layer.member(zeros_member(256 << 20))
    layer.add(name="huge", type="reg", size=1 << 40, offset=off, chunkDigest="sha256:" + "0" * 64)
    ref = write_crafted_image(root / "img", [esgz_layer(*layer.blob())])
    run = mount(root, ref)
    assert_one_line_error(run, "max_chunk_bytes")
    assert run.peak_rss_mb < 512
    assert_clean(root)


def test_traversal_digest_from_a_registry(root: Path, registry: Registry) -> None:
    """The same crafted layer served by a real registry (Range reads): refused by check and mount."""
    victim = root / "victim"
    victim.write_bytes(b"host file")
    layer = CraftedLayer()
    layer.file("bin/sh", b"#!/bin/true\n", digest=f"sha256:../../../../{victim}")
    src = write_crafted_image(root / "img", [esgz_layer(*layer.blob())])
    ref = f"{registry.host}/hostile/traversal:v1"
    assert run_cli(["copy", "--plain-http", src, ref]).rc == 0
    assert_one_line_error(run_cli(["check", "--full", "--plain-http", ref]), "digest: malformed digest")
    assert_one_line_error(mount(root, ref, "--plain-http", "--passthrough"), "digest: malformed digest")
    assert_clean(root)
    assert victim.read_bytes() == b"host file"


def test_largest_admitted_toc_stays_under_512mb_in_the_mount_process(root: Path) -> None:
    """As many entries as the default limit admits, each as costly as a few bytes of blob can
    make it (a directory with an xattr and its own owner names), mounted and listed."""
    from lazypull.format import DEFAULT_LIMITS
    from lazypull.format.gzipmember import compress_member
    from tests.support.hostile import blob_around_toc, sha

    n = DEFAULT_LIMITS.max_entries
    entry = '{"name":"%x/","type":"dir","xattrs":{"user.a":"AAAA"},"userName":"u%x","groupName":"g%x"}'
    toc = ('{"version":1,"entries":[' + ",".join(entry % (i, i, i) for i in range(n)) + "]}").encode()
    blob = blob_around_toc(compress_member(b"\0" * 512, 6), toc)
    assert len(blob) < 10 << 20
    ref = write_crafted_image(root / "img", [esgz_layer(blob, sha(toc))])
    run = mount(root, ref, "--fetch-timeout", "120")
    assert run.rc == 0, run.output
    try:
        assert sum(1 for _ in (root / "mnt").iterdir()) == n  # every entry's attributes built and cached
        peaks = [_peak_rss_mb(pid) for pid in _serving_processes(root)]
        assert peaks and max(peaks) < 512, peaks
    finally:
        assert run_cli(["umount", "--state-dir", str(root / "state"), str(root / "mnt")]).rc == 0
    assert_clean(root)


def _serving_processes(root: Path) -> list[int]:
    """The processes serving the layers of mounts under *root* (whatever serves them)."""
    me = Path("/proc/self").resolve().name
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != me:
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"lazypull" in cmd and str(root).encode() in cmd:
                out.append(int(proc.name))
    return out


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
