"""Crafted TOCs against the layer readers: each class fails at open with one clear error."""

from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path

import pytest
import zstandard

from lazypull.errors import FormatError
from lazypull.format import BytesSource, Limits, open_layer
from lazypull.format.gzipmember import compress_member, decompress_prefix
from lazypull.format.tarstream import iter_members
from lazypull.format.zstdchunked import ZstdChunkDecoder
from tests.support.hostile import CraftedLayer, blob_around_toc, sha, zeros_member
from tests.support.images import Entry, make_tar


def open_crafted(layer: CraftedLayer, limits: Limits | None = None) -> object:
    blob, toc_digest = layer.blob()
    return open_layer(BytesSource(blob), toc_digest=toc_digest, **({"limits": limits} if limits else {}))


# -- 1. digests become paths: only well-formed ones get in -------------------------------
@pytest.mark.parametrize("field", ["chunkDigest", "digest"])
@pytest.mark.parametrize(
    "bad",
    [
        "sha256:/../../{victim}",
        "sha256:../../../../{victim}",
        "sha256:" + "A" * 64,  # uppercase
        "sha256:" + "0" * 63,
        "sha256:" + "0" * 65,
        "md5:" + "0" * 32,
        "sha256:" + "0" * 62 + "/x",
        "sha256:" + "0" * 63 + "\n",
        "sha512:" + "0" * 128,  # well-formed, but chunks are verified with sha256
    ],
)
def test_toc_digests_are_validated_at_open(tmp_path: Path, field: str, bad: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"host file")
    layer = CraftedLayer()
    e = layer.file("etc/passwd", b"root:x:0:0\n")
    e[field] = bad.format(victim=victim)
    with pytest.raises(FormatError, match=f"{field}: (malformed|unsupported)") as exc:
        open_crafted(layer)
    assert "\n" not in str(exc.value)
    assert victim.read_bytes() == b"host file"


def test_toc_digest_annotation_is_validated() -> None:
    blob, _ = CraftedLayer().blob()
    with pytest.raises(FormatError, match="TOC digest annotation"):
        open_layer(BytesSource(blob), toc_digest="sha256:/../../etc/shadow")


# -- 2. whiteouts --------------------------------------------------------------------------
@pytest.mark.parametrize("name", [".wh...", ".wh..", ".wh.", "a/.wh...", "a/.wh.."])
def test_whiteouts_with_dot_or_empty_targets_are_rejected(name: str) -> None:
    layer = CraftedLayer()
    layer.add(name="a/", type="dir")
    layer.add(name=name, type="reg")
    with pytest.raises(FormatError, match="invalid whiteout"):
        open_crafted(layer)


def test_regular_whiteouts_and_opaque_dirs_still_open() -> None:
    layer = CraftedLayer()
    layer.add(name="a/", type="dir")
    layer.add(name="a/.wh.gone", type="reg")
    layer.add(name="a/.wh..wh..opq", type="reg")
    layer.add(name=".wh..wh.plnk", type="reg")  # aufs' hardlink dir: a plain name
    idx = open_crafted(layer)
    assert idx.lookup("a/.wh.gone") is not None  # type: ignore[attr-defined]


def test_converter_refuses_invalid_whiteouts() -> None:
    it, _ = iter_members(io.BytesIO(make_tar([Entry("d", "dir"), Entry("d/.wh...")])))
    with pytest.raises(FormatError, match="invalid whiteout"):
        list(it)


# -- 4. hardlinks ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("links", "message"),
    [
        ([("a", "b"), ("b", "a")], "cycle"),
        ([("a", "a")], "cycle"),
        ([("a", "b"), ("b", "c"), ("c", "a")], "cycle"),
        ([("a", "b"), ("b", "missing")], "not a file in the layer"),
        ([("a", "d")], "not a file in the layer"),
    ],
)
def test_hardlink_cycles_and_dangling_chains(links: list[tuple[str, str]], message: str) -> None:
    layer = CraftedLayer()
    layer.add(name="d/", type="dir")
    for name, target in links:
        layer.add(name=name, type="hardlink", linkName=target)
    with pytest.raises(FormatError, match=message):
        open_crafted(layer)


def test_hardlink_chains_resolve_to_the_file() -> None:
    layer = CraftedLayer()
    layer.file("f", b"data")
    layer.add(name="a", type="hardlink", linkName="f")
    layer.add(name="b", type="hardlink", linkName="a")
    idx = open_crafted(layer)
    assert idx.lookup("b").link_name == "f" and idx.lookup("f").nlink == 3  # type: ignore[attr-defined]


# -- 5. decompression bombs ------------------------------------------------------------------
def test_terabyte_file_is_rejected_before_anything_inflates() -> None:
    layer = CraftedLayer()
    layer.file("huge", b"x", size=1 << 40)  # one chunk of 2^40 bytes
    with pytest.raises(FormatError, match="max_chunk_bytes"):
        open_crafted(layer)


def test_chunks_declaring_more_than_gzip_can_hold_are_rejected() -> None:
    layer = CraftedLayer()
    size = 4 << 20
    off = layer.member(compress_member(b"x", 6))
    entries = [{"name": "f", "type": "reg", "size": 64 * size, "offset": off, "chunkSize": size}]
    entries[0]["chunkDigest"] = sha(b"\0" * size)
    for i in range(1, 64):
        o = layer.member(compress_member(b"x", 6))
        entries.append({"name": "f", "type": "chunk", "offset": o, "chunkOffset": i * size, "chunkSize": size})
        entries[-1]["chunkDigest"] = entries[0]["chunkDigest"]
    layer.entries = entries
    with pytest.raises(FormatError, match="more than estargz can hold"):
        open_crafted(layer)


def test_inflate_stops_at_the_declared_size() -> None:
    bomb = zeros_member(64 << 20)  # 64 MiB of zeros in ~64 KB
    assert len(decompress_prefix(bomb, 1 << 20, "chunk")) == 1 << 20
    frame = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))
    out = ZstdChunkDecoder().inflate(frame, 1 << 20, "chunk")
    assert len(out) == 1 << 20


def test_span_of_many_empty_members_fails_fast() -> None:
    empty = compress_member(b"", 1)
    with pytest.raises(FormatError, match="gzip members"):
        decompress_prefix(empty * 200_000, 10, "chunk")


def test_member_that_inflates_past_its_chunk_only_yields_the_chunk() -> None:
    layer = CraftedLayer()
    off = layer.member(zeros_member(64 << 20))
    data = b"\0" * (1 << 20)
    layer.add(name="f", type="reg", size=len(data), offset=off, digest=sha(data), chunkDigest=sha(data))
    blob, toc_digest = layer.blob()
    idx = open_layer(BytesSource(blob), toc_digest=toc_digest)
    assert idx.read(BytesSource(blob), "f", 0, 2 << 20) == data


# -- 6. TOC size: entries, name length, depth --------------------------------------------------
def _dir_toc(n: int) -> bytes:
    return json.dumps({"version": 1, "entries": [{"name": f"d{i:x}/", "type": "dir"} for i in range(n)]}).encode()


def test_too_many_entries_is_one_clear_error() -> None:
    blob = blob_around_toc(compress_member(b"\0" * 512, 6), _dir_toc(2001))
    with pytest.raises(FormatError, match=r"2001 entries, over the limit of 2000 \(max_entries\)"):
        open_layer(BytesSource(blob), limits=Limits(max_entries=2000))
    assert len(list(open_layer(BytesSource(blob), limits=Limits(max_entries=2001)).entries())) == 2002


def test_entry_limit_cannot_be_dodged_with_escaped_keys() -> None:
    key = '"\\u006eame"'  # "name", spelled so that counting '"name"' would miss it
    entries = ",".join("{" + key + f':"d{i:x}/","type":"dir"' + "}" for i in range(3000))
    toc = ('{"version":1,"entries":[' + entries + "]}").encode()
    blob = blob_around_toc(compress_member(b"\0" * 512, 6), toc)
    with pytest.raises(FormatError, match="max_entries"):
        open_layer(BytesSource(blob), limits=Limits(max_entries=2000))


def test_long_names_and_deep_paths() -> None:
    deep = "/".join(["d"] * 5000)
    layer = CraftedLayer()
    layer.add(name=deep + "/f", type="reg")
    with pytest.raises(FormatError, match="max_name_bytes"):
        open_crafted(layer)
    with pytest.raises(FormatError, match="max_depth"):
        open_crafted(layer, Limits(max_name_bytes=1 << 20, max_depth=1000))
    # With the limits raised, a 5,000-deep path is handled (iteratively: no recursion).
    idx = open_crafted(layer, Limits(max_name_bytes=1 << 20, max_depth=10_000))
    assert len(list(idx.entries())) == 5002  # type: ignore[attr-defined]
    layer = CraftedLayer()
    layer.add(name="s", type="symlink", linkName="x" * 5000)
    with pytest.raises(FormatError, match="max_name_bytes"):
        open_crafted(layer)


def test_prioritizing_a_deep_path_does_not_recurse() -> None:
    names = ["/".join(["d"] * i) for i in range(1, 1001)]  # deeper than Python's recursion limit
    tar = make_tar([Entry(n, "dir") for n in names])
    it, moved = iter_members(io.BytesIO(tar), [names[-1]])
    assert moved and sum(1 for _ in it) == 1001  # 1000 dirs and the landmark


def test_a_real_sized_toc_passes_the_default_limits() -> None:
    layer = CraftedLayer()
    for i in range(100):
        layer.add(name=f"usr/lib/pkg{i}/", type="dir")
        for j in range(1000):
            layer.add(name=f"usr/lib/pkg{i}/mod{j}.py", type="reg", mode=0o644, modtime="2024-01-01T00:00:00Z")
    idx = open_crafted(layer)
    assert len(list(idx.entries())) == 100_103  # type: ignore[attr-defined]


def test_tar_names_over_the_limits_are_refused_by_the_converter() -> None:
    ti = tarfile.TarInfo("/".join(["d"] * 3000))
    ti.type = tarfile.DIRTYPE
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(ti)
    it, _ = iter_members(io.BytesIO(buf.getvalue()))
    with pytest.raises(FormatError, match="max_name_bytes"):
        list(it)


# -- zstd:chunked shares the TOC checks -------------------------------------------------------------
def _zstd_blob(entries: list[dict[str, object]], body: bytes) -> bytes:
    from lazypull.format.zstdchunked import CHUNKED_MAGIC, skippable_frame

    toc = json.dumps({"version": 1, "entries": entries}).encode()
    comp = zstandard.ZstdCompressor().compress(toc)
    footer = struct.pack("<QQQQ", len(body) + 8, len(comp), len(toc), 1) + CHUNKED_MAGIC
    return body + skippable_frame(comp) + skippable_frame(footer)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"chunkDigest": "sha256:/../../etc/shadow"}, "malformed digest"),
        ({"size": 1 << 40}, "max_chunk_bytes"),
        ({"size": 60 << 20, "chunkSize": 0}, "more than zstdchunked can hold"),
        ({"name": ".wh..", "type": "reg"}, "invalid whiteout"),
    ],
)
def test_zstdchunked_hostile_tocs(override: dict[str, object], message: str) -> None:
    data = b"hello"
    body = zstandard.ZstdCompressor().compress(data)
    e = {"name": "f", "type": "reg", "size": len(data), "offset": 0, "digest": sha(data), "chunkDigest": sha(data)}
    blob = _zstd_blob([e], body)
    assert open_layer(BytesSource(blob)).read(BytesSource(blob), "f", 0, 10) == data  # type: ignore[attr-defined]
    with pytest.raises(FormatError, match=message):
        open_layer(BytesSource(_zstd_blob([e | override], body)))


def test_zstd_frame_claiming_a_terabyte_is_not_allocated() -> None:
    """A zstd frame header may claim any content size; one-shot decompression would allocate it."""
    from lazypull.format.zstdchunked import CHUNKED_MAGIC, skippable_frame

    toc = json.dumps({"version": 1, "entries": []}).encode()
    raw_block = ((len(toc) << 3) | 1).to_bytes(3, "little") + toc  # one raw, last block
    frame = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", 1 << 40) + raw_block
    with pytest.raises(FormatError, match="corrupt zstd data"):
        ZstdChunkDecoder().inflate(frame, 100, "chunk")
    body = zstandard.ZstdCompressor().compress(b"x")
    footer = struct.pack("<QQQQ", len(body) + 8, len(frame), len(toc), 1) + CHUNKED_MAGIC
    with pytest.raises(FormatError, match="zstd:chunked TOC: corrupt zstd data"):
        open_layer(BytesSource(body + skippable_frame(frame) + skippable_frame(footer)))
