"""The compact index gives back exactly what the validated TOC index holds, and refuses a
damaged or foreign file with a clear error."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from lazypull.errors import FormatError
from lazypull.format import BytesSource, LayerIndex, open_layer
from lazypull.format.compactindex import HEADER_SIZE, CompactIndex
from lazypull.format.compactwrite import compact_copy, serialize, write_file
from lazypull.format.index import EntryType
from lazypull.format.zstdchunked import build_zstdchunked
from tests.format.helpers import build
from tests.support.hostile import CraftedLayer
from tests.support.images import Entry, make_tar

BIG = os.urandom(300_000)


def layer_entries() -> list[Entry]:
    return [
        Entry("etc/", "dir", mode=0o755, uid=0, gid=0),
        Entry("etc/passwd", data=b"root:x:0:0\n", uname="root", gname="wheel"),
        Entry("etc/big", data=BIG, xattrs={"user.a": "1", "security.capability": "\x01\x02"}),
        Entry("etc/hard", "hardlink", link="etc/big"),
        Entry("etc/hard2", "hardlink", link="etc/hard"),
        Entry("etc/sym", "symlink", link="../usr/bin/x"),
        Entry("dev/null", "char", devmajor=1, devminor=3),
        Entry("dev/sda", "block", devmajor=8, devminor=0x1234),
        Entry("run/fifo", "fifo"),
        Entry("var/.wh.cache", data=b""),
        Entry("var/lib/.wh..wh..opq", data=b""),
        Entry("var/lib/new", data=b"n"),
        Entry("deep/a/b/c/d/e/f.txt", data=b"deep"),  # implicit parents
        Entry("caf\u00e9/\u00fcber", data=b"utf-8 names"),
        Entry("empty", data=b""),
        Entry("setuid", data=b"s", mode=0o4755, uid=1000, gid=2000),
    ]


def assert_same(compact: LayerIndex, idx: LayerIndex) -> None:
    """Every Entry and Chunk field, the entries' order, children in TOC order, lookups."""
    want = list(idx.entries())
    assert list(compact.entries()) == want
    assert len(compact) == len(idx)
    for e in want:
        assert compact.lookup(e.name) == e, e.name
        assert compact.lookup("/" + e.name + ("/" if e.type == EntryType.DIR and e.name else "")) == e
        if e.type == EntryType.DIR:
            assert compact.children(e.name) == idx.children(e.name), e.name
    assert compact.lookup("no/such/file") is None
    assert compact.lookup("etc/passwd/x") is None
    assert compact.children("etc/passwd") == []
    assert (compact.format, compact.blob_size, compact.prefetch_end) == (idx.format, idx.blob_size, idx.prefetch_end)
    assert list(compact.chunks_by_blob()) == list(idx.chunks_by_blob())
    assert compact.digests() == idx.digests()


def test_round_trip_of_a_built_layer_with_every_kind_of_entry() -> None:
    blob, _ = build(layer_entries(), chunk_size=64 << 10, prioritized_files=["etc/passwd"])
    idx = open_layer(BytesSource(blob))
    assert len(idx.lookup("etc/big").chunks) > 1  # type: ignore[union-attr]
    compact = compact_copy(idx)
    assert_same(compact, idx)
    assert compact.prefetch_end > 0
    src = BytesSource(blob)
    assert compact.read(src, "etc/big", 1000, 200_000) == BIG[1000:201_000]
    assert compact.read(src, "etc/hard2", 0, 10) == BIG[:10]


def test_round_trip_of_zstd_chunked() -> None:
    out = io.BytesIO()
    build_zstdchunked(io.BytesIO(make_tar(layer_entries())), out, chunk_size=100_000)
    idx = open_layer(BytesSource(out.getvalue()))
    compact = compact_copy(idx)
    assert_same(compact, idx)
    assert compact.read(BytesSource(out.getvalue()), "etc/big", 99_990, 20) == BIG[99_990:100_010]


def test_round_trip_of_a_hostile_toc() -> None:
    """Names listed twice (the last wins), a directory listed again, hardlinks to a replaced
    file, huge ids and device numbers, far dates, odd bytes in names and xattrs."""
    layer = CraftedLayer()
    layer.file("a/f", b"first")
    layer.add(name="a/h1", type="hardlink", linkName="a/f")
    layer.add(name="a/h2", type="hardlink", linkName="a/h1")
    layer.file("a/f", b"second")  # replaces a/f: a/h1 becomes the file, a/h2 links to it
    layer.add(name="a/", type="dir", mode=0o700, uid=7, modtime="2001-02-03T04:05:06Z")
    layer.file("dup", b"one")
    layer.file("dup", b"two")
    layer.file(
        "x/y",
        b"z",
        uid=(1 << 62),
        gid=(1 << 40),
        modtime="9999-12-31T23:59:59.999999Z",
        xattrs={"user.\u00ff": "AAE=", "user.empty": ""},
    )
    layer.file("x/old", b"o", modtime="0001-01-01T00:00:00Z")
    layer.add(name="x/dev", type="char", devMajor=(1 << 62), devMinor=(1 << 33))
    layer.add(name="x/.wh.gone", type="reg", size=0)
    layer.add(name="x/sub/", type="dir")
    layer.add(name="x/.wh.sub", type="reg", size=0)
    layer.add(name=".prefetch.landmark", type="reg", size=0)
    layer.file("sp ace/\u2603 \t", b"snow")
    layer.add(name="link", type="symlink", linkName="/" + "l" * 4000)
    blob, toc_digest = layer.blob()
    idx = open_layer(BytesSource(blob), toc_digest=toc_digest)
    compact = compact_copy(idx)
    assert_same(compact, idx)
    assert compact.read(BytesSource(blob), "a/h1", 0, 10) == b"first"
    assert compact.read(BytesSource(blob), "dup", 0, 10) == b"two"
    assert compact.lookup("x/y").uid == 1 << 62  # type: ignore[union-attr]


def test_many_entries_and_big_directories_bisect() -> None:
    ents = [Entry(f"d/{i:05d}-{'x' * (i % 7)}", data=b"") for i in range(3000)]
    ents += [Entry(f"d/sub{i}/f", data=b"") for i in range(50)]
    blob, _ = build(ents)
    idx = open_layer(BytesSource(blob))
    assert_same(compact_copy(idx), idx)


def test_a_file_is_reopened_only_when_intact_and_for_the_same_key(tmp_path: Path) -> None:
    blob, _ = build(layer_entries(), chunk_size=64 << 10)
    idx = open_layer(BytesSource(blob))
    path = tmp_path / "index.v1"
    written = write_file(idx, path, b"layer-key")
    assert path.stat().st_mode & 0o777 == 0o600
    assert_same(written, idx)
    again = CompactIndex.open(path, b"layer-key")
    assert_same(again, idx)
    assert again.read(BytesSource(blob), "etc/big", 5, 100_000) == BIG[5:100_005]  # its own decoder
    with pytest.raises(FormatError, match="another layer"):
        CompactIndex.open(path, b"other-key")

    data = path.read_bytes()
    damaged = {
        "truncated": data[:-1],
        "header only": data[:HEADER_SIZE],
        "half a header": data[:20],
        "empty": b"",
        "flipped body byte": data[:-100] + bytes([data[-100] ^ 1]) + data[-99:],
        "bad magic": b"X" + data[1:],
        "other version": data[:8] + b"\x63" + data[9:],
        "longer": data + b"\0",
    }
    for what, bad in damaged.items():
        path.write_bytes(bad)
        with pytest.raises(FormatError):
            CompactIndex.open(path, b"layer-key")
        if what != "flipped body byte":  # in memory there is no checksum to catch that one
            with pytest.raises(FormatError):
                CompactIndex(bad)


def test_a_corrupt_buffer_gives_format_errors_not_crashes() -> None:
    """Without the checksum (an in-memory buffer), damaged records still raise FormatError
    or read as other values: never an IndexError or a read outside the buffer."""
    blob, _ = build(layer_entries())
    data = bytearray(serialize(open_layer(BytesSource(blob))))
    rng = random.Random(7)
    for _ in range(300):
        bad = bytearray(data)
        for _ in range(8):
            bad[rng.randrange(HEADER_SIZE, len(bad))] = rng.randrange(256)
        try:
            idx = CompactIndex(bytes(bad))
            for e in idx.entries():
                idx.lookup(e.name)
                idx.children(e.name)
        except FormatError:
            pass


def test_digests_that_are_not_sha256_are_refused() -> None:
    blob, _ = build([Entry("f", data=b"x")])
    idx = open_layer(BytesSource(blob))
    idx.lookup("f").digest = "sha256:" + "A" * 64  # type: ignore[union-attr]
    with pytest.raises(FormatError, match="not sha256"):
        serialize(idx)


def test_every_entry_type_has_a_stored_code() -> None:
    from lazypull.format.compactindex import TYPES

    assert sorted(TYPES) == sorted(EntryType) and len(set(TYPES)) == len(TYPES)
