"""The hostile-image corpus through ``lazypull check`` and ``unpack``, each in a fresh process:
one-line error, nothing outside the target touched, peak RSS under 512 MB."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lazypull.format.gzipmember import compress_member
from tests.support.hostile import (
    CraftedLayer,
    assert_one_line_error,
    blob_around_toc,
    esgz_layer,
    run_cli,
    run_in_process,
    sha,
    tar_layer,
    write_crafted_image,
    zeros_member,
)
from tests.support.images import Entry, write_image

RSS_LIMIT_MB = 512


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A working directory with files that must survive every command run in it."""
    w = tmp_path / "work"
    w.mkdir()
    (w / "keep.txt").write_text("keep")
    (tmp_path / "sibling.txt").write_text("sibling")
    return w


def assert_untouched(work: Path) -> None:
    assert (work / "keep.txt").read_text() == "keep"
    assert (work.parent / "sibling.txt").read_text() == "sibling"


def base_layer() -> tuple[bytes, dict[str, str]]:
    return tar_layer([Entry("etc", "dir", mode=0o755), Entry("etc/hostname", data=b"box\n")])


# -- 1. digests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["chunkDigest", "digest"])
def test_traversal_digest_is_refused_by_check_and_unpack(
    tmp_path: Path, work: Path, field: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"host file")
    layer = CraftedLayer()
    layer.file("etc/passwd", b"root:x:0:0\n", **{field: f"sha256:/../../{victim}"})
    ref = write_crafted_image(tmp_path / "img", [esgz_layer(*layer.blob())])
    monkeypatch.chdir(work)
    for args in (["check"], ["check", "--full"], ["unpack"]):
        run = run_in_process([*args, ref] + (["rootfs"] if args == ["unpack"] else []), capsys)
        assert_one_line_error(run, f"{field}: malformed digest")
    assert victim.read_bytes() == b"host file"
    assert_untouched(work)


# -- 2. whiteouts ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [".wh...", ".wh..", ".wh.", "etc/.wh...", "etc/.wh.."])
def test_tar_whiteout_escapes_are_refused_by_unpack(
    tmp_path: Path, work: Path, name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = write_crafted_image(tmp_path / "img", [base_layer(), tar_layer([Entry(name)])])
    monkeypatch.chdir(work)
    run = run_in_process(["unpack", ref, "rootfs"], capsys)
    assert_one_line_error(run, "invalid whiteout")
    assert_untouched(work)
    assert (work / "rootfs" / "etc" / "hostname").read_bytes() == b"box\n"  # the target too


@pytest.mark.parametrize("name", [".wh...", ".wh..", ".wh."])
def test_estargz_whiteout_escapes_are_refused(
    tmp_path: Path, work: Path, name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = CraftedLayer()
    layer.add(name=name, type="reg")
    ref = write_crafted_image(tmp_path / "img", [base_layer(), esgz_layer(*layer.blob())])
    monkeypatch.chdir(work)
    assert_one_line_error(run_in_process(["unpack", ref, "rootfs"], capsys), "invalid whiteout")
    assert_one_line_error(run_in_process(["check", ref], capsys), "invalid whiteout")
    assert_untouched(work)
    assert (work / "rootfs" / "etc" / "hostname").exists()


# -- 4. hardlinks ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("links", "message"),
    [([("a", "b"), ("b", "a")], "cycle"), ([("a", "a")], "cycle"), ([("a", "b"), ("b", "nope")], "not a file")],
)
def test_estargz_hardlink_cycles_fail_fast(
    tmp_path: Path, work: Path, links: list[tuple[str, str]], message: str
) -> None:
    layer = CraftedLayer()
    for name, target in links:
        layer.add(name=name, type="hardlink", linkName=target)
    ref = write_crafted_image(tmp_path / "img", [esgz_layer(*layer.blob())])
    assert_one_line_error(run_cli(["check", "--full", ref], timeout=60), message)
    assert_one_line_error(run_cli(["unpack", ref, "rootfs"], cwd=work, timeout=60), message)


@pytest.mark.parametrize("links", [[("a", "b"), ("b", "a")], [("a", "a")], [("a", "b"), ("b", "nope")]])
def test_tar_hardlink_cycles_fail_fast(tmp_path: Path, work: Path, links: list[tuple[str, str]]) -> None:
    ref = write_crafted_image(tmp_path / "img", [tar_layer([Entry(n, "hardlink", link=t) for n, t in links])])
    assert_one_line_error(run_cli(["unpack", ref, "rootfs"], cwd=work, timeout=60), "does not exist")
    assert_untouched(work)


# -- 5. decompression bombs ------------------------------------------------------------------------------
def test_terabyte_file_in_a_4mb_blob(tmp_path: Path, work: Path) -> None:
    """The reported bomb: a 2^40-byte file whose chunks' members inflate to GiBs."""
    layer = CraftedLayer()
    member = zeros_member(256 << 20)  # 256 MiB of zeros, ~250 KB
    chunk = 1 << 30
    entries = []
    for i in range(4):
        off = layer.member(member)
        e = {"name": "huge", "type": "chunk", "offset": off, "chunkOffset": i * chunk, "chunkSize": chunk}
        entries.append(e | {"chunkDigest": sha(b"")})
    entries[-1]["chunkSize"] = (1 << 40) - 3 * chunk
    entries[0] |= {"type": "reg", "size": 1 << 40}
    layer.entries = entries
    blob, toc_digest = layer.blob()
    assert len(blob) < 5 << 20
    ref = write_crafted_image(tmp_path / "img", [esgz_layer(blob, toc_digest)])
    for args in (["check", "--full", ref], ["unpack", ref, "rootfs"]):
        run = run_cli(args, cwd=work)
        assert_one_line_error(run, "max_chunk_bytes")
        assert run.peak_rss_mb < RSS_LIMIT_MB, run.peak_rss_mb


def test_gzip_bomb_chunks_within_the_limits_stay_bounded(tmp_path: Path, work: Path) -> None:
    """Each 64 MiB chunk is ~64 KB of gzip: declared sizes are plausible, so the chunks are
    inflated; one at a time, each bounded by its declared size (members hold 4x more)."""
    layer = CraftedLayer()
    member = zeros_member(256 << 20)
    chunk = 64 << 20
    wrong = sha(b"not zeros")
    entries = []
    for i in range(2):
        off = layer.member(member)
        entries.append(
            {"name": "z", "type": "chunk", "offset": off, "chunkOffset": i * chunk, "chunkSize": chunk}
            | {"chunkDigest": sha(b"\0" * chunk) if i == 0 else wrong}
        )
    entries[0] |= {"type": "reg", "size": 2 * chunk}
    layer.entries = entries
    ref = write_crafted_image(tmp_path / "img", [esgz_layer(*layer.blob())])
    for args in (["check", "--full", ref], ["unpack", ref, "rootfs"]):
        run = run_cli(args, cwd=work)
        assert_one_line_error(run, "digest mismatch")
        assert run.peak_rss_mb < RSS_LIMIT_MB, run.peak_rss_mb


# -- 6. TOC size -----------------------------------------------------------------------------------------------
def test_two_million_entries_are_rejected_clearly(tmp_path: Path) -> None:
    names = (f"{i:x}" for i in range(2_000_000))
    toc = b'{"version":1,"entries":[' + ",".join(f'{{"name":"{n}","type":"dir"}}' for n in names).encode() + b"]}"
    blob = blob_around_toc(compress_member(b"\0" * 512, 6), toc)
    assert len(blob) < 10 << 20
    ref = write_crafted_image(tmp_path / "img", [(blob, {"containerd.io/snapshot/stargz/toc.digest": sha(toc)})])
    run = run_cli(["check", ref])
    assert_one_line_error(run, "2000000 entries, over the limit of 300000 (max_entries)")
    assert run.peak_rss_mb < RSS_LIMIT_MB, run.peak_rss_mb


def test_deep_path_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layer = CraftedLayer()
    layer.add(name="/".join(["d"] * 5000), type="dir")
    ref = write_crafted_image(tmp_path / "img", [esgz_layer(*layer.blob())])
    assert_one_line_error(run_in_process(["check", ref], capsys), "max_name_bytes")
    deep = [Entry("/".join(["d"] * 1500), "dir")]
    ref = write_crafted_image(tmp_path / "img2", [tar_layer(deep)])
    assert_one_line_error(run_in_process(["unpack", ref, str(tmp_path / "rootfs")], capsys), "max_depth")


# -- 11. check --full verifies the blob itself ------------------------------------------------------------------
def test_check_full_verifies_blob_digest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_image(tmp_path / "src", [[Entry("a", data=os.urandom(5000)), Entry("d", "dir")]])
    src, dst = f"oci:{tmp_path / 'src'}:latest", f"oci:{tmp_path / 'dst'}:esgz"
    assert run_in_process(["convert", "--no-progress", src, dst], capsys).rc == 0
    index = json.loads((tmp_path / "dst" / "index.json").read_text())
    mdig = index["manifests"][0]["digest"].partition(":")[2]
    manifest = json.loads((tmp_path / "dst" / "blobs" / "sha256" / mdig).read_bytes())
    layer = manifest["layers"][0]
    path = tmp_path / "dst" / "blobs" / "sha256" / layer["digest"].partition(":")[2]
    assert run_in_process(["check", "--full", dst], capsys).rc == 0
    blob = bytearray(path.read_bytes())
    toc_offset = int(blob[-51 + 16 : -51 + 32], 16)
    assert blob[toc_offset : toc_offset + 2] == b"\x1f\x8b"
    blob[toc_offset + 4 : toc_offset + 8] = b"LAZY"  # the TOC member's gzip MTIME: outside every chunk
    path.chmod(0o644)
    path.write_bytes(bytes(blob))
    assert run_in_process(["check", dst], capsys).rc == 0  # footer, TOC and its digest are all still fine
    run = run_in_process(["check", "--full", dst], capsys)
    assert_one_line_error(run, f"blob: digest mismatch (expected {layer['digest']}")


# -- 12. input files and destinations ------------------------------------------------------------------------------
def test_bad_inputs_and_destinations_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_image(tmp_path / "src", [[Entry("a", data=b"x")]])
    src = f"oci:{tmp_path / 'src'}:latest"
    (tmp_path / "bin.rec").write_bytes(Path("/bin/sh").read_bytes()[:4096])
    (tmp_path / "prof.json").write_text('{"prefetch": {"landmarks": 5}}')
    (tmp_path / "afile").write_text("x")
    cases = [
        (["convert", "--record-in", str(tmp_path / "bin.rec"), src, f"oci:{tmp_path}/d1:x"], "not UTF-8"),
        (["convert", "--prefetch-profile", str(tmp_path / "prof.json"), src, f"oci:{tmp_path}/d2:x"], "lists"),
        (["convert", "--no-progress", src, "oci:/proc/x:x"], "/proc/x"),
        (["convert", "--no-progress", src, f"oci:{tmp_path}/afile/sub:x"], "Not a directory"),
        (["unpack", src, str(tmp_path / "afile")], "not a directory"),
        (["unpack", src, str(tmp_path / "afile" / "sub")], "not a directory"),
    ]
    for args, fragment in cases:
        assert_one_line_error(run_in_process(args, capsys), fragment)


def test_chunks_out_of_blob_order_unpack_completely(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The last chunk of a file first in the blob: the file is still written whole."""
    a, b = os.urandom(1000), os.urandom(700)
    layer = CraftedLayer()
    off_b = layer.member(compress_member(b, 6))
    off_a = layer.member(compress_member(a, 6))
    layer.add(name="f", type="reg", size=1700, offset=off_a, chunkSize=1000, chunkDigest=sha(a), digest=sha(a + b))
    layer.add(name="f", type="chunk", offset=off_b, chunkOffset=1000, chunkSize=700, chunkDigest=sha(b))
    ref = write_crafted_image(tmp_path / "img", [esgz_layer(*layer.blob())])
    assert run_in_process(["unpack", ref, str(tmp_path / "rootfs")], capsys).rc == 0
    assert (tmp_path / "rootfs" / "f").read_bytes() == a + b
    assert run_in_process(["check", "--full", ref], capsys).rc == 0  # the file digest is taken in file order


def test_whiteout_of_a_tree_deeper_than_the_recursion_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = "/".join(["d"] * 1020)
    lower = [Entry(deep, "dir"), Entry(deep + "/f", data=b"x"), Entry("keep", data=b"k")]
    ref = write_crafted_image(tmp_path / "img", [tar_layer(lower), tar_layer([Entry(".wh.d")])])
    assert run_in_process(["unpack", ref, str(tmp_path / "rootfs")], capsys).rc == 0
    assert sorted(os.listdir(tmp_path / "rootfs")) == ["keep"]


def test_tar_layer_entry_limit_and_flat_memory(tmp_path: Path) -> None:
    """Tar layers are applied in two streaming passes (names first, for the whiteouts): an
    entry over the limit, or an invalid whiteout as the last entry, fails before anything
    is written, and no TarInfo per entry is kept."""
    from lazypull.convert.unpack import RootDir, apply_tar_layer
    from lazypull.errors import FormatError
    from lazypull.format import Limits
    from lazypull.oci.layout import OCILayout
    from lazypull.oci.types import Manifest

    files = [Entry(f"f{i}", data=b"x") for i in range(50)]
    for extra, limits, message in (
        ([], Limits(max_entries=49), r"more than 49 entries \(max_entries\)"),
        ([Entry(".wh...")], Limits(), "invalid whiteout"),
    ):
        ref = write_crafted_image(tmp_path / "img", [tar_layer(files + extra)], tag=f"t{len(extra)}")
        lay = OCILayout.from_ref(ref)
        d = lay.resolve()
        layer = Manifest.parse(lay.fetch(d), d.media_type).layers[0]
        root = RootDir(tmp_path / f"rootfs{len(extra)}")
        try:
            with pytest.raises(FormatError, match=message):
                apply_tar_layer(root, lay, layer, limits=limits)
        finally:
            root.close()
        assert os.listdir(tmp_path / f"rootfs{len(extra)}") == []
