"""The fetcher over a SOCI layer: one fetch per span, however many files it holds."""

from __future__ import annotations

import gzip
import random
import threading
from pathlib import Path

from lazypull.cache.chunks import ChunkCache
from lazypull.format import BytesSource
from lazypull.format.soci import build_ztoc_bytes, open_soci
from lazypull.fs.fetcher import Fetcher
from tests.support.images import Entry, make_tar

rng = random.Random(7)
SMALL = {f"pkg/m{i:03}.py": rng.randbytes(rng.randint(100, 4000)) for i in range(300)}
BIG = bytes(rng.choices(b"abcdefghij \n", k=3 << 20))  # Huffman-coded: spans start mid-byte


class CountingSource(BytesSource):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.calls: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def read_at(self, offset: int, length: int) -> bytes:
        with self._lock:
            self.calls.append((offset, length))
        return super().read_at(offset, length)


def setup(tmp_path: Path) -> tuple[Fetcher, CountingSource, object]:
    tar = make_tar([Entry("pkg", "dir"), *[Entry(n, data=d) for n, d in SMALL.items()], Entry("big", data=BIG)])
    blob = gzip.compress(tar, 6, mtime=0)
    idx = open_soci(build_ztoc_bytes(blob, span_size=256 << 10).to_bytes(), len(blob))
    src = CountingSource(blob)
    return Fetcher(idx, src, ChunkCache(tmp_path / "cache"), min_fetch=0), src, idx


def test_files_of_one_span_cost_one_fetch(tmp_path: Path) -> None:
    fetcher, src, idx = setup(tmp_path)
    spans = set()
    for name, data in SMALL.items():
        e = idx.lookup(name)  # type: ignore[attr-defined]
        assert fetcher.read(e, 0, e.size) == data
        spans.update(c.blob_offset for c in e.chunks)
    assert len(src.calls) == len(spans) < len(SMALL) // 10, (len(src.calls), len(spans))
    assert sum(n for _o, n in src.calls) <= sum(s.end - s.start for s in idx.spans)  # type: ignore[attr-defined]


def test_a_big_file_reads_its_spans_in_one_request(tmp_path: Path) -> None:
    fetcher, src, idx = setup(tmp_path)
    e = idx.lookup("big")  # type: ignore[attr-defined]
    assert len(e.chunks) > 4
    assert fetcher.read(e, 0, e.size) == BIG
    assert len(src.calls) == 1  # spans overlapping by one byte are still coalesced


def test_background_fetch_fetches_each_span_once(tmp_path: Path) -> None:
    fetcher, src, idx = setup(tmp_path)
    fetcher.background_fetch(threading.Event(), pause_s=0)
    fetched = sum(n for _o, n in src.calls)
    assert fetched <= src.size + len(idx.spans)  # type: ignore[attr-defined]
    src.calls.clear()
    for name, data in SMALL.items():
        e = idx.lookup(name)  # type: ignore[attr-defined]
        assert fetcher.read(e, 0, e.size) == data
    assert src.calls == []
