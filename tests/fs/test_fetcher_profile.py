"""The fetcher's profile prefetch: first-access order, ranges, the byte budget, files the
layer lacks, and how much of what it fetched was then read."""

from __future__ import annotations

import gzip
import os
import threading
from pathlib import Path

import pytest

from lazypull.cache.chunks import ChunkCache
from lazypull.format import BytesSource, open_layer
from lazypull.format.soci import build_ztoc_bytes, open_soci
from lazypull.fs import fetcher as fetcher_module
from lazypull.fs.fetcher import Fetcher
from tests.format.helpers import build
from tests.support.images import Entry, make_tar

CHUNK = 64 << 10
FILES = {n: os.urandom(200_000) for n in ("a", "b", "c", "d")}  # 4 chunks each (3 full + 1 of 3392 bytes)


class Recording(BytesSource):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read_at(self, offset: int, length: int) -> bytes:
        self.reads.append(offset)
        return super().read_at(offset, length)


def _fetcher(tmp_path: Path) -> tuple[Fetcher, Recording]:
    blob, _ = build([Entry(n, data=d) for n, d in FILES.items()], chunk_size=CHUNK)
    src = Recording(blob)
    idx = open_layer(BytesSource(blob))
    return Fetcher(idx, src, ChunkCache(tmp_path / "cache"), min_fetch=0), src


def _offset(f: Fetcher, name: str) -> int:
    e = f.index.lookup(name)
    assert e is not None
    return e.chunks[0].blob_offset


def test_order_ranges_unknown_files_and_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetcher_module, "PROFILE_WINDOW", 1)  # every chunk its own window: order shows
    f, src = _fetcher(tmp_path)
    plan = [("d", [(0, 10)]), ("no/such/file", []), ("b", [(CHUNK, 10), (3 * CHUNK, 10)])]
    n = f.profile_fetch(plan, 10 << 20, threading.Event())
    b = f.index.lookup("b")
    assert b is not None
    assert src.reads == [_offset(f, "d"), b.chunks[1].blob_offset, b.chunks[3].blob_offset]
    assert n == f.stats.profile_bytes > 0 and f.stats.profile_unknown_files == 1
    assert f.stats.profile_chunk_bytes == CHUNK + CHUNK + (200_000 - 3 * CHUNK)
    assert f.read(b, CHUNK + 5, 10) == FILES["b"][CHUNK + 5 : CHUNK + 15]  # from the cache
    assert len(src.reads) == 3 and f.stats.profile_read_bytes == CHUNK


def test_the_budget_cuts_in_profile_order(tmp_path: Path) -> None:
    f, _ = _fetcher(tmp_path)
    f.profile_fetch([("c", []), ("a", [(0, 10)])], CHUNK * 3 + 10, threading.Event())
    c = f.index.lookup("c")
    assert c is not None
    assert [f.cache.contains(ch.digest) for ch in c.chunks] == [True, True, True, False]
    assert f.stats.profile_chunk_bytes == 3 * CHUNK  # the cut: a (after c) is not fetched either
    assert not any(f.cache.contains(ch.digest) for ch in f.index.lookup("a").chunks)  # type: ignore[union-attr]


def test_soci_layers_are_prefetched_in_spans(tmp_path: Path) -> None:
    """The profile's ranges are content offsets: on a SOCI layer they select the spans."""
    blob = gzip.compress(make_tar([Entry(n, data=d) for n, d in FILES.items()]), 6, mtime=0)
    ztoc = build_ztoc_bytes(blob, span_size=CHUNK)
    src = Recording(blob)
    f = Fetcher(open_soci(ztoc.to_bytes(), len(blob)), src, ChunkCache(tmp_path / "cache"), min_fetch=0)
    f.profile_fetch([("c", [(100_000, 10)])], 10 << 20, threading.Event())
    c = f.index.lookup("c")
    assert c is not None
    (span,) = c.chunks_for(100_000, 10)
    assert src.reads and f.cache.contains(span.digest) and f.stats.profile_chunk_bytes == span.size
    assert f.read(c, 100_000, 10) == FILES["c"][100_000:100_010] and len(src.reads) == 1


def test_a_small_gap_is_fetched_through_in_one_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetcher_module, "PROFILE_GAP", 2 * CHUNK)  # a chunk of random data is a bit over CHUNK
    f, src = _fetcher(tmp_path)
    a = f.index.lookup("a")
    assert a is not None and a.chunks[2].blob_offset - a.chunks[0].blob_end <= fetcher_module.PROFILE_GAP
    f.profile_fetch([("a", [(0, 10), (2 * CHUNK, 10)])], 10 << 20, threading.Event())
    assert src.reads == [a.chunks[0].blob_offset]  # one request: chunks 0 and 2, and the gap between
    assert f.cache.contains(a.chunks[2].digest) and not f.cache.contains(a.chunks[1].digest)
