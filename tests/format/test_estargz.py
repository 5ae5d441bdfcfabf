from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazypull.errors import DigestMismatchError, FormatError
from lazypull.format import BytesSource, EntryType, build_estargz, open_estargz
from lazypull.format.estargz_reader import read_toc_member, safe_name
from lazypull.format.footer import ESTARGZ_FOOTER_SIZE, estargz_footer, legacy_footer, parse_footer
from lazypull.format.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC
from tests.format.helpers import assert_matches_tar, build
from tests.support.images import Entry, make_tar

BIG = bytes(range(256)) * 4096  # 1 MiB, not very compressible pattern


def sample_entries() -> list[Entry]:
    return [
        Entry("etc", "dir", mode=0o755, uid=1, gid=2),
        Entry("etc/big", data=BIG + b"tail", mode=0o600),
        Entry("etc/small", data=b"hello world\n", uname="root", gname="wheel"),
        Entry("etc/empty"),
        Entry("etc/link", "symlink", link="small"),
        Entry("etc/abs", "symlink", link="/etc/small"),
        Entry("etc/hard", "hardlink", link="etc/small"),
        Entry("dev", "dir", mode=0o755),
        Entry("dev/null", "char", devmajor=1, devminor=3, mode=0o666),
        Entry("dev/sda", "block", devmajor=8, devminor=0, mode=0o660),
        Entry("pipe", "fifo"),
        Entry("deep/a/b/c.txt", data=b"deep", xattrs={"user.k": "v", "user.bin": "\x01\x02"}),
        Entry("suid", data=b"#!/bin/sh\n", mode=0o4755),
        Entry("n" * 150 + "/long-名前-ファイル.txt", data=b"unicode"),
        Entry(".wh.gone", data=b""),
        Entry("opq", "dir"),
        Entry("opq/.wh..wh..opq"),
    ]


def test_roundtrip_content_and_metadata() -> None:
    ents = sample_entries()
    blob, res = build(ents, chunk_size=300_000)
    idx = open_estargz(BytesSource(blob), toc_digest=res.toc_digest)
    assert_matches_tar(idx, blob, make_tar(ents))
    big = idx.lookup("etc/big")
    assert big is not None and len(big.chunks) == 4
    assert idx.lookup("etc/small").nlink == 2  # type: ignore[union-attr]
    assert idx.lookup("deep/a") is not None and idx.lookup("deep/a").type == EntryType.DIR  # type: ignore[union-attr]
    assert sorted(idx.children("etc")) == ["abs", "big", "empty", "hard", "link", "small"]


def test_blob_is_valid_gzip_tar_and_ids_match() -> None:
    blob, res = build(sample_entries(), chunk_size=300_000)
    plain = gzip.decompress(blob)
    assert res.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert res.uncompressed_size == len(plain)
    assert res.blob_digest == "sha256:" + hashlib.sha256(blob).hexdigest() and res.blob_size == len(blob)
    with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
        names = tf.getnames()
    assert names[0] == NO_PREFETCH_LANDMARK and names[-1] == "stargz.index.json"
    # footer points at the TOC member, which holds the TOC whose digest is reported
    footer = parse_footer(blob[-ESTARGZ_FOOTER_SIZE:], len(blob))
    toc_json = read_toc_member(BytesSource(blob), footer.toc_offset, len(blob) - 51, 1 << 20)
    assert "sha256:" + hashlib.sha256(toc_json).hexdigest() == res.toc_digest


def test_members_start_at_every_payload_and_chunk() -> None:
    blob, _res = build(sample_entries(), chunk_size=300_000)
    toc = json.loads(
        read_toc_member(BytesSource(blob), parse_footer(blob[-51:], len(blob)).toc_offset, len(blob) - 51, 1 << 20)
    )
    for e in toc["entries"]:
        if e.get("offset"):
            assert blob[e["offset"] : e["offset"] + 2] == b"\x1f\x8b", e["name"]
            assert e["chunkDigest"].startswith("sha256:")
    regs = [e for e in toc["entries"] if e["name"] == "etc/big"]
    assert (
        regs[0]["chunkSize"] == 300_000 and regs[0]["digest"] == "sha256:" + hashlib.sha256(BIG + b"tail").hexdigest()
    )
    chunks = [e for e in toc["entries"] if e["type"] == "chunk"]
    assert [c["chunkOffset"] for c in chunks] == [300_000, 600_000, 900_000]
    assert "chunkSize" not in chunks[-1]  # last chunk: 0, omitted


def test_deterministic_and_gzip_input_equals_plain() -> None:
    tar = make_tar(sample_entries())
    outs = []
    for src in (tar, tar, gzip.compress(tar)):
        out = io.BytesIO()
        build_estargz(io.BytesIO(src), out, chunk_size=300_000, workers=2)
        outs.append(out.getvalue())
    assert outs[0] == outs[1] == outs[2]


def test_prioritized_files_come_first_with_parents_and_landmark() -> None:
    ents = sample_entries()
    blob, res = build(ents, prioritized_files=["deep/a/b/c.txt", "/etc/small", "missing/file"])
    idx = open_estargz(BytesSource(blob), toc_digest=res.toc_digest)
    toc = TOC.parse(
        read_toc_member(BytesSource(blob), parse_footer(blob[-51:], len(blob)).toc_offset, len(blob) - 51, 1 << 20)
    )
    names = [e.name for e in toc.entries if e.type != "chunk"]
    # deep/ has no entries of its own (implicit parents); etc/ does and moves with etc/small
    assert names[:4] == ["deep/a/b/c.txt", "etc/", "etc/small", PREFETCH_LANDMARK]
    landmark = next(e for e in toc.entries if e.name == PREFETCH_LANDMARK)
    assert idx.prefetch_end == landmark.offset > 0
    small = idx.lookup("etc/small")
    assert small is not None and small.chunks[0].blob_end <= idx.prefetch_end
    assert_matches_tar(idx, blob, make_tar(ents))


def test_legacy_stargz_footer_is_read() -> None:
    blob, res = build(sample_entries())
    footer = parse_footer(blob[-51:], len(blob))
    legacy = blob[:-51] + legacy_footer(footer.toc_offset)
    idx = open_estargz(BytesSource(legacy), toc_digest=res.toc_digest)
    assert idx.read(BytesSource(legacy), "etc/small", 0, 100) == b"hello world\n"


def test_toc_digest_mismatch_is_rejected() -> None:
    blob, _ = build(sample_entries())
    with pytest.raises(DigestMismatchError):
        open_estargz(BytesSource(blob), toc_digest="sha256:" + "0" * 64)


def test_tampered_chunk_never_returns_bytes() -> None:
    blob, res = build([Entry("a", data=b"A" * 5000), Entry("b", data=b"B" * 5000)])
    idx = open_estargz(BytesSource(blob), toc_digest=res.toc_digest)
    a = idx.lookup("a")
    assert a is not None
    c = a.chunks[0]
    # Replace a's member with a valid gzip member of different content of the same length.
    evil = gzip.compress(b"X" * 5000, mtime=0)
    span = c.blob_end - c.blob_offset
    forged = blob[: c.blob_offset] + evil.ljust(span, b"\0")[:span] + blob[c.blob_end :]
    idx2 = open_estargz(BytesSource(forged), toc_digest=res.toc_digest)
    with pytest.raises((DigestMismatchError, FormatError)):
        idx2.read(BytesSource(forged), "a", 0, 10)
    assert idx2.read(BytesSource(forged), "b", 0, 5000) == b"B" * 5000
    flipped = bytearray(blob)
    flipped[c.blob_offset + 20] ^= 0xFF
    with pytest.raises((DigestMismatchError, FormatError)):
        idx.read(BytesSource(bytes(flipped)), "a", 0, 10)


@pytest.mark.parametrize("cut", [1, 10, 51, 200])
def test_truncated_blob_is_a_format_error(cut: int) -> None:
    blob, res = build(sample_entries())
    with pytest.raises(FormatError):
        open_estargz(BytesSource(blob[:-cut]), toc_digest=res.toc_digest)


def _blob_with_toc(entries: list[dict[str, object]], payload: bytes = b"") -> bytes:
    """A syntactically valid blob around a hand-written (possibly hostile) TOC."""
    from lazypull.format.estargz_writer import padding, tar_header
    from lazypull.format.gzipmember import compress_member

    toc_json = json.dumps({"version": 1, "entries": entries}).encode()
    ti = tarfile.TarInfo("stargz.index.json")
    ti.size = len(toc_json)
    body = compress_member(payload or b"\0" * 512, 6)
    toc_member = compress_member(tar_header(ti) + toc_json + padding(len(toc_json)) + b"\0" * 1024, 6)
    return body + toc_member + estargz_footer(len(body))


Z = "sha256:" + "0" * 64  # well-formed, matches nothing


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"name": "../etc/passwd", "type": "reg", "size": 1, "offset": 0, "chunkDigest": Z}], "escapes"),
        ([{"name": "/abs", "type": "dir"}], "absolute"),
        ([{"name": "a", "type": "reg", "size": 5, "offset": 999999, "chunkDigest": Z}], "beyond"),
        ([{"name": "a", "type": "reg", "size": 5, "offset": 0}], "chunkDigest"),
        (  # a name listed twice is accepted (the later wins) but never lets two files share a chunk
            [
                {"name": "a", "type": "reg", "size": 5, "offset": 0, "chunkDigest": Z},
                {"name": "b", "type": "reg", "size": 5, "offset": 0, "chunkDigest": Z},
                {"name": "b", "type": "reg", "size": 5, "offset": 0, "chunkDigest": Z},
            ],
            "overlaps",
        ),
        ([{"name": "d", "type": "dir"}, {"name": "d", "type": "reg"}, {"name": "d/x", "type": "reg"}], "not one"),
        ([{"name": "h", "type": "hardlink", "linkName": "nope"}], "hardlink"),
        ([{"name": "h", "type": "hardlink", "linkName": "../../x"}], "escapes"),
        ([{"name": "a", "type": "weird"}], r"Invalid enum value 'weird' - at `\$.entries\[0\].type`"),
        ([{"name": "a", "type": "reg", "size": -1}], r"Expected `int` >= 0 - at `\$.entries\[0\].size`"),
        ([{"name": "a", "type": "reg", "size": 1 << 63}], r"Expected `int` <= \d+ - at `\$.entries\[0\].size`"),
        (
            [
                {"name": "a", "type": "reg", "size": 10, "offset": 0, "chunkSize": 4, "chunkDigest": Z},
                {"name": "a", "type": "chunk", "offset": 0, "chunkOffset": 2, "chunkDigest": Z},
            ],
            "overlap",
        ),
        ([{"name": "a", "type": "reg", "size": 10, "offset": 0, "chunkSize": 4, "chunkDigest": Z}], "cover"),
        ([{"name": "a", "type": "reg", "size": 5, "offset": 0, "chunkOffset": 3, "chunkDigest": Z}], "expected 0"),
        ([{"name": "a", "type": "reg", "size": 5, "offset": 0, "chunkSize": 6, "chunkDigest": Z}], "add up"),
        ([{"name": "a", "type": "reg", "size": 5, "offset": 0, "chunkDigest": "sha256:x"}], "chunkDigest: malformed"),
        ([{"name": "a", "type": "reg", "size": 5, "offset": 0, "innerOffset": 1 << 26, "chunkDigest": Z}], "max_chunk"),
        ([{"name": "a//b", "type": "dir"}, {"name": "./a/../../b", "type": "dir"}], "escapes"),
        ([{"name": "a/\u0000b", "type": "dir"}], "NUL"),
        ([{"name": "x", "type": "chunk", "offset": 0}], "does not follow"),
        ([{"name": "a", "type": "reg", "xattrs": {"k": "***"}}], "base64"),
    ],
)
def test_malicious_tocs_are_rejected(entries: list[dict[str, object]], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        open_estargz(BytesSource(_blob_with_toc(entries)))


def test_toc_size_limit_and_not_json() -> None:
    blob, _ = build(sample_entries())
    with pytest.raises(FormatError, match="limit"):
        open_estargz(BytesSource(blob), max_toc_bytes=100)
    from lazypull.format.estargz_writer import tar_header
    from lazypull.format.gzipmember import compress_member

    ti = tarfile.TarInfo("stargz.index.json")
    ti.size = 8
    bad = compress_member(b"\0" * 512, 6)
    bad += compress_member(tar_header(ti) + b"notjson!" + b"\0" * 1528, 6) + estargz_footer(len(bad))
    with pytest.raises(FormatError, match="JSON"):
        open_estargz(BytesSource(bad))


def test_footer_rejects_garbage() -> None:
    with pytest.raises(FormatError):
        parse_footer(b"\0" * 51, 100)
    f = bytearray(estargz_footer(10))
    f[20] = ord("z")  # non-hex digit in the offset
    with pytest.raises(FormatError):
        parse_footer(bytes(f), 1000)
    with pytest.raises(FormatError, match="beyond"):
        parse_footer(estargz_footer(10_000), 100)


names = st.text(alphabet="abcdefghij-_.é", min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.dictionaries(names, st.binary(max_size=3000), min_size=1, max_size=8),
    chunk=st.integers(min_value=1, max_value=2000),
)
def test_property_any_tar_roundtrips(files: dict[str, bytes], chunk: int) -> None:
    ents = [Entry("d", "dir")] + [Entry(f"d/{n}", data=d, mode=0o640) for n, d in files.items()]
    blob, res = build(ents, chunk_size=chunk, compression_level=1)
    idx = open_estargz(BytesSource(blob), toc_digest=res.toc_digest)
    assert_matches_tar(idx, blob, make_tar(ents))
    for n, d in files.items():
        if d:
            mid = len(d) // 3
            assert idx.read(BytesSource(blob), f"d/{n}", mid, chunk + 7) == d[mid : mid + chunk + 7]


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=120))
def test_fuzz_footer_never_crashes(tail: bytes) -> None:
    try:
        parse_footer(tail, 10_000)
    except FormatError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "name",
                        "type",
                        "size",
                        "offset",
                        "chunkDigest",
                        "linkName",
                        "xattrs",
                        "chunkSize",
                        "chunkOffset",
                        "mode",
                        "version",
                        "entries",
                    ]
                ),
                c,
                max_size=4,
            )
        ),
        max_leaves=12,
    )
)
def test_fuzz_toc_parser_only_raises_format_errors(doc: object) -> None:
    data = json.dumps({"version": 1, "entries": doc if isinstance(doc, list) else [doc]}).encode()
    try:
        TOC.parse(data)
        blob = _blob_with_toc(doc if isinstance(doc, list) else [doc])  # type: ignore[arg-type]
        open_estargz(BytesSource(blob))
    except FormatError:
        pass


def test_sub_second_mtimes_round_to_the_nearest_second_as_the_reference() -> None:
    from lazypull.format.toc import format_modtime

    assert format_modtime(1795837120.709454501) == "2026-11-28T03:38:41Z"
    assert format_modtime(1795837108.49) == "2026-11-28T03:38:28Z"
    assert format_modtime(1_600_000_000) == "2020-09-13T12:26:40Z"
    assert format_modtime(0) == ""


def test_safe_name_fast_path_agrees_with_splitting() -> None:
    """Every name of up to five components from a set of awkward ones normalises as splitting
    on '/' and dropping empty and '.' components does, and is refused for a leading '/', a NUL
    or a '..' component, whichever path through safe_name it takes."""
    tokens = ["", ".", "..", "a", "bc", ".x", "x.", "\0", "é"]
    for n in range(6):
        for parts in itertools.product(tokens, repeat=n):
            raw = "/".join(parts)
            kept = [p for p in raw.split("/") if p not in ("", ".")]
            if raw.startswith("/") or "\0" in raw or ".." in kept:
                with pytest.raises(FormatError):
                    safe_name(raw)
            else:
                assert safe_name(raw) == "/".join(kept), raw


def test_index_names_agree_with_safe_name() -> None:
    """The index normalises names inline for speed: each awkward name of up to four components
    lands where safe_name puts it, or is refused as safe_name refuses it."""
    from lazypull.format.estargz_reader import GzipChunkDecoder, TOCIndex
    from lazypull.format.toc import TOCEntry

    tokens = ["", ".", "..", "a", "bc", ".x", "x.", "\0", "é"]
    for n in range(1, 5):
        for parts in itertools.product(tokens, repeat=n):
            raw = "/".join(parts)
            for name in (raw, raw + "/"):
                entries = [TOCEntry(name=name, type="dir", mode=0o700)]
                try:
                    want = safe_name(name)
                except FormatError:
                    with pytest.raises(FormatError):
                        TOCIndex(entries, blob_size=0, data_end=0, fmt="estargz", decoder=GzipChunkDecoder())
                    continue
                idx = TOCIndex(entries, blob_size=0, data_end=0, fmt="estargz", decoder=GzipChunkDecoder())
                e = idx.lookup(want)
                assert e is not None and e.name == want and e.type == EntryType.DIR and e.mode == 0o700, name
                assert len(idx) == (1 if want == "" else 1 + want.count("/") + 1), name
