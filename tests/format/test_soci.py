"""zTOC build, flatbuffers encoding, checkpoint inflate and verified reads of plain gzip layers."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import random
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazypull.errors import DigestMismatchError, FormatError
from lazypull.format import BytesSource
from lazypull.format.soci import build_ztoc_bytes, open_soci
from lazypull.format.soci.dispatch import open_layer_index, with_ztoc
from lazypull.format.soci.zinfo import POINT_SIZE, Zinfo
from lazypull.format.soci.zlibc import WINDOW, inflate_from
from lazypull.format.soci.ztoc import FileMetadata, Ztoc
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor
from tests.format.helpers import assert_matches_tar
from tests.support.images import Entry, make_tar


def noise(rng: random.Random, n: int) -> bytes:
    """Half-compressible bytes: random runs and repeats, so deflate makes varied blocks."""
    out = bytearray()
    while len(out) < n:
        if rng.random() < 0.5:
            out += rng.randbytes(rng.randint(1, 3000))
        else:
            out += bytes([rng.randint(0, 255)]) * rng.randint(1, 5000)
    return bytes(out[:n])


def sample_entries(seed: int = 1) -> list[Entry]:
    rng = random.Random(seed)
    entries = [Entry("etc", "dir", mode=0o755), Entry("etc/big", data=noise(rng, 3_000_000))]
    entries += [Entry(f"etc/f{i}", data=noise(rng, rng.choice([0, 1, 700, 40_000]))) for i in range(60)]
    entries += [
        Entry("etc/x", data=b"xattr", xattrs={"user.k": "v"}, uid=7, gid=8, uname="u", gname="g", mode=0o4755),
        Entry("etc/" + "long" * 40, data=b"long name"),
        Entry("etc/link", "symlink", link="big"),
        Entry("etc/hard", "hardlink", link="etc/f1"),
        Entry("dev", "dir"),
        Entry("dev/null", "char", devmajor=1, devminor=3),
        Entry("dev/fifo", "fifo"),
    ]
    return entries


@pytest.fixture(scope="module")
def layer() -> tuple[bytes, bytes, Ztoc]:
    tar = make_tar(sample_entries())
    blob = gzip.compress(tar, 6, mtime=0)
    return tar, blob, build_ztoc_bytes(blob, span_size=256 << 10)


def test_ztoc_serves_every_file_and_its_metadata(layer: tuple[bytes, bytes, Ztoc]) -> None:
    tar, blob, ztoc = layer
    assert ztoc.max_span_id >= 5 and len(ztoc.span_digests) == ztoc.max_span_id + 1
    idx = open_soci(ztoc.to_bytes(), len(blob))
    assert idx.format == "soci"
    assert_matches_tar(idx, blob, tar)
    e = idx.lookup("etc/x")
    assert e is not None and e.xattrs == {"user.k": b"v"} and e.mode == 0o4755 and (e.uname, e.gname) == ("u", "g")


def test_flatbuffers_roundtrip_keeps_every_field(layer: tuple[bytes, bytes, Ztoc]) -> None:
    _tar, _blob, ztoc = layer
    again = Ztoc.parse(ztoc.to_bytes())
    assert again == ztoc
    assert again.version == "0.9" and again.build_tool_identifier == "lazypull"
    # bytes after the root (soci's prefetch metadata) are ignored
    assert Ztoc.parse(ztoc.to_bytes() + b"---SOCI-PREFETCH---[]") == ztoc


def test_span_digests_cover_the_compressed_ranges_soci_defines(layer: tuple[bytes, bytes, Ztoc]) -> None:
    _tar, blob, ztoc = layer
    zinfo = Zinfo.parse(ztoc.checkpoints)
    assert len(ztoc.checkpoints) == 12 + POINT_SIZE * len(zinfo.points)
    assert zinfo.points[0][:3] == (10, 0, 0)  # right after the 10-byte gzip header
    for i, (cin, _out, bits, _w) in enumerate(zinfo.points):
        start = cin - (1 if bits else 0)
        end = zinfo.points[i + 1][0] if i + 1 < len(zinfo.points) else len(blob)
        assert ztoc.span_digests[i] == digestlib.of_bytes(blob[start:end])


def test_version_one_checkpoints_without_the_first_point_are_read(layer: tuple[bytes, bytes, Ztoc]) -> None:
    tar, blob, ztoc = layer
    v1 = ztoc.checkpoints[:12] + ztoc.checkpoints[12 + POINT_SIZE :]
    idx = open_soci(Ztoc(**{**ztoc.__dict__, "checkpoints": v1}).to_bytes(), len(blob))
    assert_matches_tar(idx, blob, tar)


def test_each_span_inflates_from_its_checkpoint(layer: tuple[bytes, bytes, Ztoc]) -> None:
    tar, blob, ztoc = layer
    for s in open_soci(ztoc.to_bytes(), len(blob)).spans:
        assert (
            inflate_from(blob[s.start : s.end], s.bits, s.window, s.out_end - s.out_start)
            == tar[s.out_start : s.out_end]
        )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 600_000),
    level=st.sampled_from([1, 6, 9]),
    span=st.sampled_from([1 << 12, 1 << 15, 1 << 17, 1 << 20]),
    reads=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 200_000)), min_size=1, max_size=8),
)
def test_random_reads_match_python_gzip(
    seed: int, size: int, level: int, span: int, reads: list[tuple[float, int]]
) -> None:
    rng = random.Random(seed)
    data = noise(rng, size)
    tar = make_tar([Entry("a", data=b"head"), Entry("d", data=data), Entry("z", data=b"tail")])
    blob = gzip.compress(tar, level, mtime=0)
    ztoc = build_ztoc_bytes(blob, span_size=span)
    assert gzip.decompress(blob) == tar
    idx = open_soci(ztoc.to_bytes(), len(blob))
    src = BytesSource(blob)
    for frac, length in reads:
        off = int(frac * size)
        assert idx.read(src, "d", off, length) == data[off : off + length]
    assert idx.read(src, "z", 0, 10) == b"tail"


def test_a_file_spanning_checkpoints_is_cut_into_span_chunks(layer: tuple[bytes, bytes, Ztoc]) -> None:
    _tar, blob, ztoc = layer
    idx = open_soci(ztoc.to_bytes(), len(blob))
    big = idx.lookup("etc/big")
    assert big is not None and len(big.chunks) > 3
    spans = {s.start: s for s in idx.spans}
    for c in big.chunks:
        s = spans[c.blob_offset]
        assert c.blob_end == s.end and c.inner_offset + c.size <= s.out_end - s.out_start
    src = BytesSource(blob)
    c = big.chunks[1]
    data = idx.decode_chunk(c, src.read_at(c.blob_offset, c.blob_end - c.blob_offset))
    assert c.digest == "sha256:" + hashlib.sha256(data).hexdigest()  # the cache key is the content digest


def test_a_corrupt_span_is_rejected_before_inflating(layer: tuple[bytes, bytes, Ztoc]) -> None:
    _tar, blob, ztoc = layer
    idx = open_soci(ztoc.to_bytes(), len(blob))
    c = idx.lookup("etc/big").chunks[2]  # type: ignore[union-attr]
    raw = bytearray(blob[c.blob_offset : c.blob_end])
    raw[len(raw) // 2] ^= 1
    with pytest.raises(DigestMismatchError):
        idx.decode_chunk(c, bytes(raw))


def test_multi_member_gzip_is_refused() -> None:
    tar = make_tar([Entry("a", data=b"x" * 1000)])
    with pytest.raises(FormatError, match="more than one gzip member"):
        build_ztoc_bytes(gzip.compress(tar[:1024]) + gzip.compress(tar[1024:]))


def test_truncated_and_corrupt_gzip_are_format_errors() -> None:
    blob = gzip.compress(make_tar([Entry("a", data=random.Random(3).randbytes(100_000))]))
    with pytest.raises(FormatError, match="truncated"):
        build_ztoc_bytes(blob[: len(blob) // 2])
    bad = bytearray(blob)
    bad[20:40] = b"\xff" * 20
    with pytest.raises(FormatError):
        build_ztoc_bytes(bytes(bad))


def test_open_layer_index_fetches_and_verifies_the_ztoc(layer: tuple[bytes, bytes, Ztoc]) -> None:
    tar, blob, ztoc = layer
    zbytes = ztoc.to_bytes()
    zdesc = Descriptor(mt.SOCI_ZTOC, digestlib.of_bytes(zbytes), len(zbytes))
    ldesc = with_ztoc(Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(blob), len(blob)), zdesc)
    idx = open_layer_index(ldesc, BytesSource(blob), lambda d: BytesSource(zbytes))
    assert_matches_tar(idx, blob, tar)
    with pytest.raises(DigestMismatchError):
        open_layer_index(ldesc, BytesSource(blob), lambda d: BytesSource(zbytes[:-1] + bytes([zbytes[-1] ^ 1])))


# -- hostile zTOCs: clear errors, never wrong bytes ------------------------------------------
def _mutate(ztoc: Ztoc, **kw: object) -> bytes:
    return Ztoc(**{**ztoc.__dict__, **kw}).to_bytes()


def _points(ztoc: Ztoc) -> list[tuple[int, int, int, bytes]]:
    return [(a, b, c, bytes(w)) for a, b, c, w in Zinfo.parse(ztoc.checkpoints).points]


def test_hostile_ztocs_get_clear_errors(layer: tuple[bytes, bytes, Ztoc]) -> None:
    _tar, blob, ztoc = layer
    n = len(blob)
    pts = _points(ztoc)
    files = ztoc.files
    cases: dict[str, bytes] = {
        "checkpoint past the blob": _mutate(
            ztoc, checkpoints=Zinfo(1, [*pts[:-1], (n + 5, pts[-1][1], 0, pts[-1][3])]).to_bytes()
        ),
        "checkpoints out of order": _mutate(ztoc, checkpoints=Zinfo(1, [pts[0], pts[2], pts[1], *pts[3:]]).to_bytes()),
        "huge checkpoint count": _mutate(ztoc, checkpoints=struct.pack("<iq", 2**31 - 1, 1) + ztoc.checkpoints[12:]),
        "missing span digests": _mutate(ztoc, span_digests=ztoc.span_digests[:-1]),
        "file past the archive": _mutate(
            ztoc,
            files=[
                *files,
                FileMetadata("evil", "reg", uncompressed_offset=ztoc.uncompressed_archive_size, uncompressed_size=10),
            ],
        ),
        "negative offset": _mutate(
            ztoc, files=[FileMetadata("evil", "reg", uncompressed_offset=-512, uncompressed_size=10)]
        ),
        "escaping name": _mutate(ztoc, files=[FileMetadata("../../etc/passwd", "reg")]),
        "unknown type": _mutate(ztoc, files=[FileMetadata("x", "socket")]),
        "wrong blob size": _mutate(ztoc, compressed_archive_size=n + 1),
        "bad digest": _mutate(ztoc, span_digests=["md5:abc"] * len(ztoc.span_digests)),
        "not a flatbuffer": b"\xff\xff\xff\x7f" + b"\0" * 40,
        "empty": b"",
        "huge vector": struct.pack("<I", 8) + b"\0" * 4 + struct.pack("<I", 0xFFFFFFF0) + b"\0" * 8,
    }
    for what, data in cases.items():
        with pytest.raises(FormatError):
            open_soci(data, n)
            pytest.fail(what)


def test_a_lying_digest_or_window_gives_errors_not_bytes(layer: tuple[bytes, bytes, Ztoc]) -> None:
    _tar, blob, ztoc = layer
    src = BytesSource(blob)
    lying = _mutate(ztoc, span_digests=[digestlib.of_bytes(b"other")] * len(ztoc.span_digests))
    idx = open_soci(lying, len(blob))
    with pytest.raises(DigestMismatchError):
        idx.read(src, "etc/big", 0, 100)


def test_window_and_bits_are_needed(layer: tuple[bytes, bytes, Ztoc]) -> None:
    tar, blob, ztoc = layer
    s = open_soci(ztoc.to_bytes(), len(blob)).spans[3]
    want = tar[s.out_start : s.out_end]
    assert inflate_from(blob[s.start : s.end], s.bits, s.window, len(want)) == want
    try:
        wrong = inflate_from(blob[s.start : s.end], s.bits, bytes(WINDOW), len(want))
    except FormatError:
        wrong = b""
    assert wrong != want


def test_a_ztoc_pointing_a_file_at_other_bytes_gets_errors(layer: tuple[bytes, bytes, Ztoc]) -> None:
    """Span digests pin the compressed bytes; the tar header in front of each file's data
    pins what the zTOC says about the file (name, size, that it is a file at all)."""
    _tar, blob, ztoc = layer
    src = BytesSource(blob)
    by_name = {f.name: f for f in ztoc.files}
    a = next(f for f in ztoc.files if f.uncompressed_size == 40_000)
    b = by_name["etc/big"]
    sized = [f for f in ztoc.files if f.type == "reg" and f.uncompressed_size == 700]
    assert len(sized) >= 2  # two files of the same size: a swap keeps every size right

    def lie(**changes: int) -> bytes:
        files = []
        for f in ztoc.files:
            off = changes.get(f.name)
            files.append(dataclasses.replace(f, uncompressed_offset=off) if off is not None else f)
        return _mutate(ztoc, files=files)

    cases = {
        "swapped same-size files": lie(
            **{sized[0].name: sized[1].uncompressed_offset, sized[1].name: sized[0].uncompressed_offset}
        ),
        "offset into another file's data": lie(**{a.name: b.uncompressed_offset + 512 * 100}),
        "offset at a directory's header": lie(**{a.name: by_name["etc"].uncompressed_offset}),
    }
    for what, data in cases.items():
        idx = open_soci(data, len(blob))  # consistent on its face: caught when read
        name = sized[0].name if what.startswith("swapped") else a.name
        with pytest.raises(FormatError):
            idx.read(src, name, 0, 100)
            pytest.fail(what)
    with pytest.raises(FormatError, match="outside the layer"):
        open_soci(lie(**{a.name: a.uncompressed_offset + 1}), len(blob))  # not on a tar block


def gzip_with_header_fields(data: bytes) -> bytes:
    """A gzip member with FEXTRA, FNAME and FCOMMENT (soci's compatibility cases)."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = c.compress(data) + c.flush()
    extra = b"ab" + struct.pack("<H", 5) + b"extra"
    header = b"\x1f\x8b\x08" + bytes([4 | 8 | 16]) + b"\0\0\0\0\0\xff"
    header += struct.pack("<H", len(extra)) + extra + b"layer.tar\0" + b"a comment\0"
    return header + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def test_gzip_header_fields_move_the_first_checkpoint() -> None:
    tar = make_tar(sample_entries(seed=5))
    blob = gzip_with_header_fields(tar)
    ztoc = build_ztoc_bytes(blob, span_size=1 << 18)
    first = Zinfo.parse(ztoc.checkpoints).points[0]
    assert first[:3] == (len(blob) - len(blob.split(b"a comment\0", 1)[1]), 0, 0)
    assert_matches_tar(open_soci(ztoc.to_bytes(), len(blob)), blob, tar)


def test_soci_style_uncompressed_size_at_the_tar_end(layer: tuple[bytes, bytes, Ztoc]) -> None:
    """soci records where Go's tar reader stopped (after the two zero blocks), not the end
    of the padded stream: the last span then ends there."""
    tar, blob, ztoc = layer
    end = max(f.uncompressed_offset + f.uncompressed_size for f in ztoc.files)
    tar_end = -(-end // 512) * 512 + 1024
    assert tar_end < len(tar)
    assert_matches_tar(open_soci(_mutate(ztoc, uncompressed_archive_size=tar_end), len(blob)), blob, tar)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=6))
def test_fuzzed_ztocs_only_raise_format_errors(data: bytes, flips: list[tuple[int, int]]) -> None:
    small = Ztoc(
        files=[FileMetadata("a", "reg", 512, 3, xattrs={"SCHILY.xattr.user.x": b"1"}), FileMetadata("d", "dir")],
        compressed_archive_size=100,
        uncompressed_archive_size=2048,
        span_digests=[digestlib.of_bytes(b"")],
        checkpoints=Zinfo(1 << 20, [(10, 0, 0, bytes(WINDOW))]).to_bytes(),
    ).to_bytes()
    for blob in (data, small, small[: len(data)]):
        mutated = bytearray(blob)
        for pos, x in flips:
            if mutated:
                mutated[pos % len(mutated)] ^= x
        try:
            open_soci(bytes(mutated), 100)
        except FormatError:
            pass


# The zTOC schema as soci-snapshotter publishes it (ztoc/fbs/ztoc.fbs): compiled with the
# reference flatbuffers compiler when it is installed, to check both directions against
# code generated from the schema rather than against this package's own reader/writer.
ZTOC_FBS = """
namespace ztoc;
table Xattr { key: string; value: string; }
table FileMetadata {
  name: string; type: string; uncompressed_offset: long; uncompressed_size: long; linkname: string;
  mode: long; uid: uint32; gid: uint32; uname: string; gname: string; mod_time: string;
  devmajor: long; devminor: long; xattrs: [Xattr];
}
enum CompressionAlgorithm : byte { Gzip = 1, Uncompressed }
table CompressionInfo {
  compression_algorithm: CompressionAlgorithm = Gzip; max_span_id: int; span_digests: [string]; checkpoints: [ubyte];
}
table TOC { metadata: [FileMetadata]; }
table Ztoc {
  version: string; build_tool_identifier: string; compressed_archive_size: long;
  uncompressed_archive_size: long; toc: TOC; compression_info: CompressionInfo;
}
root_type Ztoc;
"""


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> object:
    import importlib
    import shutil
    import subprocess
    import sys

    flatc = shutil.which("flatc")
    if flatc is None:
        pytest.skip("flatc (Debian: flatbuffers-compiler) is not installed")
    d = tmp_path_factory.mktemp("fbs")
    (d / "ztoc.fbs").write_text(ZTOC_FBS)
    subprocess.run([flatc, "--python", "-o", str(d / "gen"), str(d / "ztoc.fbs")], check=True)
    sys.path.insert(0, str(d / "gen"))
    try:
        return importlib.import_module("ztoc")
    finally:
        sys.path.remove(str(d / "gen"))


def test_schema_generated_code_reads_our_ztocs(layer: tuple[bytes, bytes, Ztoc], generated: object) -> None:
    import importlib

    _tar, _blob, ztoc = layer
    gen_ztoc = importlib.import_module("ztoc.Ztoc")
    root = gen_ztoc.Ztoc.GetRootAs(ztoc.to_bytes(), 0)
    assert root.Version() == b"0.9" and root.BuildToolIdentifier() == b"lazypull"
    assert root.CompressedArchiveSize() == ztoc.compressed_archive_size
    assert root.UncompressedArchiveSize() == ztoc.uncompressed_archive_size
    info = root.CompressionInfo()
    assert info.CompressionAlgorithm() == 1 and info.MaxSpanId() == ztoc.max_span_id
    assert [info.SpanDigests(i).decode() for i in range(info.SpanDigestsLength())] == ztoc.span_digests
    assert bytes(info.Checkpoints(i) for i in range(info.CheckpointsLength())) == ztoc.checkpoints
    toc = root.Toc()
    assert toc.MetadataLength() == len(ztoc.files)
    for i, f in enumerate(ztoc.files):
        m = toc.Metadata(i)
        assert (m.Name().decode(), m.Type().decode(), m.UncompressedOffset(), m.UncompressedSize()) == (
            f.name, f.type, f.uncompressed_offset, f.uncompressed_size,
        )  # fmt: skip
        assert (m.Mode(), m.Uid(), m.Gid(), m.Devmajor(), m.Devminor()) == (
            f.mode, f.uid, f.gid, f.devmajor, f.devminor,
        )  # fmt: skip
        assert (m.Linkname() or b"").decode() == f.linkname and (m.ModTime() or b"").decode() == f.mod_time
        xs = {m.Xattrs(j).Key().decode(): m.Xattrs(j).Value() for j in range(m.XattrsLength())}
        assert xs == f.xattrs


def test_ztocs_built_by_schema_generated_code_are_read(layer: tuple[bytes, bytes, Ztoc], generated: object) -> None:
    """Written the way soci's Go marshaller does (its generated builder functions), read here."""
    import importlib

    import flatbuffers

    tar, blob, ztoc = layer
    g = {n: importlib.import_module(f"ztoc.{n}") for n in ("Ztoc", "TOC", "FileMetadata", "Xattr", "CompressionInfo")}
    b = flatbuffers.Builder(0)
    version, tool = b.CreateString("0.9"), b.CreateString("AWS SOCI CLI v0.2")
    metas = []
    for f in reversed(ztoc.files):
        strs = [b.CreateString(x) for x in (f.name, f.type, f.linkname, f.uname, f.gname, f.mod_time)]
        xs = []
        for k in sorted(f.xattrs):
            ko, vo = b.CreateString(k), b.CreateString(f.xattrs[k])
            g["Xattr"].XattrStart(b)
            g["Xattr"].XattrAddKey(b, ko)
            g["Xattr"].XattrAddValue(b, vo)
            xs.append(g["Xattr"].XattrEnd(b))
        g["FileMetadata"].FileMetadataStartXattrsVector(b, len(xs))
        for x in reversed(xs):
            b.PrependUOffsetTRelative(x)
        xv = b.EndVector()
        fm = g["FileMetadata"]
        fm.FileMetadataStart(b)
        fm.FileMetadataAddName(b, strs[0])
        fm.FileMetadataAddType(b, strs[1])
        fm.FileMetadataAddUncompressedOffset(b, f.uncompressed_offset)
        fm.FileMetadataAddUncompressedSize(b, f.uncompressed_size)
        fm.FileMetadataAddLinkname(b, strs[2])
        fm.FileMetadataAddMode(b, f.mode)
        fm.FileMetadataAddUid(b, f.uid)
        fm.FileMetadataAddGid(b, f.gid)
        fm.FileMetadataAddUname(b, strs[3])
        fm.FileMetadataAddGname(b, strs[4])
        fm.FileMetadataAddModTime(b, strs[5])
        fm.FileMetadataAddDevmajor(b, f.devmajor)
        fm.FileMetadataAddDevminor(b, f.devminor)
        fm.FileMetadataAddXattrs(b, xv)
        metas.append(fm.FileMetadataEnd(b))
    metas.reverse()
    g["TOC"].TOCStartMetadataVector(b, len(metas))
    for m in reversed(metas):
        b.PrependUOffsetTRelative(m)
    mv = b.EndVector()
    g["TOC"].TOCStart(b)
    g["TOC"].TOCAddMetadata(b, mv)
    toc = g["TOC"].TOCEnd(b)
    cps = b.CreateByteVector(ztoc.checkpoints)
    ds = [b.CreateString(d) for d in ztoc.span_digests]
    g["CompressionInfo"].CompressionInfoStartSpanDigestsVector(b, len(ds))
    for d in reversed(ds):
        b.PrependUOffsetTRelative(d)
    dv = b.EndVector()
    ci = g["CompressionInfo"]
    ci.CompressionInfoStart(b)
    ci.CompressionInfoAddMaxSpanId(b, ztoc.max_span_id)
    ci.CompressionInfoAddSpanDigests(b, dv)
    ci.CompressionInfoAddCheckpoints(b, cps)
    info = ci.CompressionInfoEnd(b)  # compression_algorithm left out: the schema default (Gzip)
    z = g["Ztoc"]
    z.ZtocStart(b)
    z.ZtocAddVersion(b, version)
    z.ZtocAddBuildToolIdentifier(b, tool)
    z.ZtocAddToc(b, toc)
    z.ZtocAddCompressedArchiveSize(b, ztoc.compressed_archive_size)
    z.ZtocAddUncompressedArchiveSize(b, ztoc.uncompressed_archive_size)
    z.ZtocAddCompressionInfo(b, info)
    b.Finish(z.ZtocEnd(b))
    data = bytes(b.Output())
    again = Ztoc.parse(data)
    assert again.files == ztoc.files and again.build_tool_identifier == "AWS SOCI CLI v0.2"
    assert again.compression_algorithm == 1 and again.span_digests == ztoc.span_digests
    assert_matches_tar(open_soci(data, len(blob)), blob, tar)


def test_the_ztoc_is_taken_from_a_cache_and_checked(layer: tuple[bytes, bytes, Ztoc], tmp_path: object) -> None:
    from pathlib import Path

    from lazypull.cache.chunks import ChunkCache

    tar, blob, ztoc = layer
    zbytes = ztoc.to_bytes()
    zdesc = Descriptor(mt.SOCI_ZTOC, digestlib.of_bytes(zbytes), len(zbytes))
    ldesc = with_ztoc(Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(blob), len(blob)), zdesc)
    cache = ChunkCache(Path(str(tmp_path)) / "cache")
    fetched: list[str] = []

    def fetch(d: Descriptor) -> BytesSource:
        fetched.append(d.digest)
        return BytesSource(zbytes)

    open_layer_index(ldesc, BytesSource(blob), fetch, cache)
    idx = open_layer_index(ldesc, BytesSource(blob), fetch, cache)
    assert fetched == [zdesc.digest]  # the second open found it in the cache
    assert_matches_tar(idx, blob, tar)
