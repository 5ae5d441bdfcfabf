"""The fetcher without FUSE: coalescing, single-flight, verification, failures."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.cache.chunks import ChunkCache
from lazypull.format import BytesSource, build_estargz, open_layer
from lazypull.format.index import LayerIndex
from lazypull.fs.fetcher import Fetcher, FetchError
from lazypull.polling import wait_for
from lazypull.registry.blobsource import RegistryBlobSource
from lazypull.registry.client import RegistryClient
from lazypull.registry.options import RegistryOptions
from lazypull.registry.reference import Reference
from lazypull.registry.transport import Transport
from tests.registry.test_client import push_blob
from tests.support.images import Entry, make_tar
from tests.support.proxy import Proxy, start_proxy
from tests.support.registry import Registry

BIG = os.urandom(1 << 20)


class SlowCountingSource(BytesSource):
    def __init__(self, data: bytes, delay: float = 0.0) -> None:
        super().__init__(data)
        self.calls: list[tuple[int, int]] = []
        self.delay = delay
        self.fail = False
        self._lock = threading.Lock()

    def read_at(self, offset: int, length: int) -> bytes:
        with self._lock:
            self.calls.append((offset, length))
        time.sleep(self.delay)
        if self.fail:
            raise OSError("registry unreachable")
        return super().read_at(offset, length)


def setup(tmp_path: Path, delay: float = 0.0, prioritized: list[str] | None = None):  # type: ignore[no-untyped-def]
    ents = [Entry("big", data=BIG), Entry("a", data=b"a" * 5000), Entry("b", data=b"b" * 5000)]
    out = io.BytesIO()
    res = build_estargz(io.BytesIO(make_tar(ents)), out, chunk_size=64 << 10, prioritized_files=prioritized)
    blob = out.getvalue()
    src = SlowCountingSource(blob, delay)
    idx = open_layer(BytesSource(blob), toc_digest=res.toc_digest)
    return idx, src, Fetcher(idx, src, ChunkCache(tmp_path / "cache"), timeout=5), blob


def test_sequential_read_coalesces_into_few_requests(tmp_path: Path) -> None:
    idx, src, f, _ = setup(tmp_path)
    e = idx.lookup("big")
    assert e is not None and len(e.chunks) == 16
    data = b"".join(f.read(e, off, 128 << 10) for off in range(0, len(BIG), 128 << 10))
    assert data == BIG
    assert len(src.calls) == 1  # the first miss fetched the rest of the file (readahead)
    assert sum(n for _, n in src.calls) == e.chunks[-1].blob_end - e.chunks[0].blob_offset


def test_sequential_reader_gets_the_next_window_fetched_ahead(tmp_path: Path) -> None:
    idx, src, _f, _ = setup(tmp_path, delay=0.05)
    f = Fetcher(idx, src, ChunkCache(tmp_path / "c2"), timeout=5, readahead=256 << 10)
    e = idx.lookup("big")
    assert e is not None and len(e.chunks) == 16
    step = 64 << 10
    for off in (0, step, 2 * step):  # sequential, but less than a window so far
        assert f.read(e, off, step) == BIG[off : off + step]
    assert f.stats.readaheads == 0
    f.read(e, 3 * step, step)  # a whole window read in sequence: what follows is fetched ahead
    wait_for(lambda: f.stats.readaheads == 1 and not f._inflight, 5, "the read-ahead fetch")
    assert src.calls[-1][0] == e.chunks[6].blob_offset  # beyond the chunks the reader has (0-5)
    out = b"".join(f.read(e, off, step) for off in range(4 * step, len(BIG), step))
    assert out == BIG[4 * step :]
    wait_for(lambda: not f._inflight, 5, "read-aheads to settle")
    fetched = sum(n for _, n in src.calls)
    assert fetched == e.chunks[-1].blob_end - e.chunks[0].blob_offset  # each byte fetched once
    assert f.stats.readaheads >= 2  # later windows were fetched ahead too


def test_a_failed_read_ahead_is_fetched_again_by_its_reader(tmp_path: Path) -> None:
    idx, src, _f, _ = setup(tmp_path, delay=0.2)
    f = Fetcher(idx, src, ChunkCache(tmp_path / "c2"), timeout=5, readahead=128 << 10)
    e = idx.lookup("big")
    assert e is not None
    step = 64 << 10  # one chunk; a window holds one chunk too (two are over 128 KiB compressed)
    f.read(e, 0, step)
    f.read(e, step, step)  # a window in sequence: chunk 2 is fetched ahead, while...
    src.fail = True  # ...the registry drops out
    out: list[bytes] = []
    waiter = threading.Thread(target=lambda: out.append(f.read(e, 2 * step, 100)))
    waiter.start()  # waits for the read-ahead, which fails
    wait_for(lambda: f.stats.fetch_errors == 1, 5, "the read-ahead to fail")
    src.fail = False
    waiter.join()
    # The reader fetched for itself: neither the failure it waited for nor a remembered one
    # (``failed_hold``) reached it.
    assert out == [BIG[2 * step : 2 * step + 100]]
    assert f.stats.fetch_errors == 1


def test_random_reads_start_no_read_ahead(tmp_path: Path) -> None:
    idx, src, _f, _ = setup(tmp_path)
    f = Fetcher(idx, src, ChunkCache(tmp_path / "c2"), timeout=5, readahead=64 << 10)
    e = idx.lookup("big")
    assert e is not None
    for k in (9, 3, 10, 6):  # one chunk each (the window is one chunk), never a window in sequence
        assert f.read(e, k * (64 << 10) + 10, 100) == BIG[k * (64 << 10) + 10 :][:100]
    assert f.stats.readaheads == 0 and len(src.calls) == 4


def test_concurrent_readers_share_one_fetch(tmp_path: Path) -> None:
    idx, src, f, _ = setup(tmp_path, delay=0.2)
    e = idx.lookup("big")
    assert e is not None
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda o=o: results.append(f.read(e, o, 4096)))
        for o in (0, 100_000, 300_000, 900_000, 0)
    ]
    threads[0].start()  # the first miss is in flight (its fetch takes 0.2 s) before the others read
    wait_for(lambda: src.calls, 5, "the first fetch to start")
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join()
    assert len(src.calls) == 1
    fetched = sum(n for _, n in src.calls)
    assert fetched <= e.chunks[-1].blob_end - e.chunks[0].blob_offset  # no overlapping fetches
    assert sorted(results) == sorted(BIG[o : o + 4096] for o in (0, 100_000, 300_000, 900_000, 0))


def test_tampered_chunk_is_eio_and_other_files_fine(tmp_path: Path) -> None:
    idx, _src, _f, blob = setup(tmp_path)
    a = idx.lookup("a")
    assert a is not None
    bad = bytearray(blob)
    bad[a.chunks[0].blob_offset + 15] ^= 0xFF
    f = Fetcher(idx, SlowCountingSource(bytes(bad)), ChunkCache(tmp_path / "c2"), timeout=5)
    with pytest.raises(FetchError):
        f.read(a, 0, 10)
    assert f.read(idx.lookup("b"), 0, 5000) == b"b" * 5000  # type: ignore[arg-type]
    assert f.stats.verify_errors == 1


def test_source_failure_is_an_error_not_a_hang(tmp_path: Path) -> None:
    idx, src, f, _ = setup(tmp_path)
    src.fail = True
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="unreachable"):
        f.read(idx.lookup("a"), 0, 10)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 5
    src.fail = False
    calls = len(src.calls)
    with pytest.raises(FetchError, match="unreachable"):  # the kernel's immediate retry: no second wait
        f.read(idx.lookup("a"), 0, 10)  # type: ignore[arg-type]
    assert len(src.calls) == calls
    time.sleep(f.failed_hold)
    assert f.read(idx.lookup("a"), 0, 10) == b"a" * 10  # type: ignore[arg-type]


def test_prefetch_fetches_prioritized_range_once_then_background_the_rest(tmp_path: Path) -> None:
    idx, src, f, _ = setup(tmp_path, prioritized=["a"])
    assert f.prefetch() > 0
    assert len(src.calls) == 1 and src.calls[0][0] + src.calls[0][1] <= idx.prefetch_end
    n_before = len(src.calls)
    assert f.read(idx.lookup("a"), 0, 5000) == b"a" * 5000  # type: ignore[arg-type]
    assert len(src.calls) == n_before  # served from the prefetched cache
    stop = threading.Event()
    f.background_fetch(stop)
    calls = len(src.calls)
    assert f.read(idx.lookup("big"), 0, len(BIG)) == BIG  # type: ignore[arg-type]
    assert f.read(idx.lookup("b"), 0, 5000) == b"b" * 5000  # type: ignore[arg-type]
    assert len(src.calls) == calls  # everything was already fetched in the background


def _small_files_layer(tmp_path: Path, min_fetch: int) -> tuple[object, SlowCountingSource, Fetcher, list[bytes]]:
    datas = [os.urandom(3000) for _ in range(40)]  # incompressible: ~3 KB of blob each
    out = io.BytesIO()
    res = build_estargz(io.BytesIO(make_tar([Entry(f"f{i:02}", data=d) for i, d in enumerate(datas)])), out)
    blob = out.getvalue()
    src = SlowCountingSource(blob)
    idx = open_layer(BytesSource(blob), toc_digest=res.toc_digest)
    return idx, src, Fetcher(idx, src, ChunkCache(tmp_path / "cache"), timeout=5, min_fetch=min_fetch), datas


def test_a_miss_brings_neighbouring_small_files_up_to_min_fetch(tmp_path: Path) -> None:
    idx, src, f, datas = _small_files_layer(tmp_path, 32 << 10)
    read = lambda i: f.read(idx.lookup(f"f{i:02}"), 0, 3000)  # type: ignore[attr-defined] # noqa: E731
    assert read(0) == datas[0]
    assert len(src.calls) == 1 and 32 << 10 <= src.calls[0][1] <= 64 << 10
    assert [read(i) for i in range(1, 9)] == datas[1:9]  # came with the first request
    assert len(src.calls) == 1
    assert read(39) == datas[39]  # far away: a request of its own
    assert len(src.calls) == 2


def test_min_fetch_zero_fetches_only_what_is_read(tmp_path: Path) -> None:
    idx, src, f, datas = _small_files_layer(tmp_path / "z", 0)
    for i in range(3):
        assert f.read(idx.lookup(f"f{i:02}"), 0, 3000) == datas[i]  # type: ignore[attr-defined]
    assert len(src.calls) == 3 and all(n < 4096 for _, n in src.calls)


# -- against a misbehaving registry (the fault proxy in front of a real docker-registry) --
FETCH_DEADLINE = 2.0


@pytest.fixture
def remote(tmp_path: Path, registry: Registry) -> Iterator[tuple[Fetcher, Proxy, LayerIndex]]:
    idx, _src, _f, blob = setup(tmp_path)
    proxy = start_proxy(registry.url)
    try:
        ref = Reference.parse(f"{proxy.host}/fetcher/layer:x")
        client = RegistryClient(RegistryOptions(plain_http=True), transport=Transport(total_timeout=FETCH_DEADLINE))
        desc = push_blob(client, ref, blob)
        src = RegistryBlobSource(client, ref, desc)
        yield Fetcher(idx, src, ChunkCache(tmp_path / "cache2"), timeout=FETCH_DEADLINE, min_fetch=0), proxy, idx
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    "mode", [{"trickle_bps": 1024}, {"stall": "accept"}, {"stall": "body"}, {"resets": 10**6}], ids=str
)
def test_faulty_registry_fails_starter_and_waiters_within_the_deadline(
    remote: tuple[Fetcher, Proxy, LayerIndex], mode: dict[str, object]
) -> None:
    f, proxy, idx = remote
    a, big = idx.lookup("a"), idx.lookup("big")
    assert a is not None and big is not None
    assert f.read(a, 0, 10) == b"a" * 10  # keep-alive connection in the pool
    proxy.faults.match = "/blobs/"
    for k, v in mode.items():
        setattr(proxy.faults, k, v)
    took: list[float] = []
    errors: list[Exception] = []

    def reader(off: int) -> None:
        t0 = time.monotonic()
        try:
            f.read(big, off, 4096)
        except FetchError as e:
            errors.append(e)
        took.append(time.monotonic() - t0)

    threads = [threading.Thread(target=reader, args=(o,)) for o in (0, 0, 70_000)]  # a starter and waiters
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(FETCH_DEADLINE + 5)
    assert len(errors) == 3, errors
    assert max(took) < FETCH_DEADLINE + 1, took
    assert f.stats.fetch_errors >= 1
    proxy.heal()
    proxy.faults.resets = 0
    time.sleep(f.failed_hold)
    assert f.read(big, 0, len(BIG)) == BIG  # the registry is healthy again: reads work


def test_stale_connection_costs_no_read_timeout(remote: tuple[Fetcher, Proxy, LayerIndex]) -> None:
    f, proxy, idx = remote
    f.timeout = 30.0
    assert isinstance(f.source, RegistryBlobSource)
    f.source.client.transport.total_timeout = 30.0
    a, b = idx.lookup("a"), idx.lookup("b")
    assert a is not None and b is not None
    assert f.read(a, 0, 10) == b"a" * 10
    proxy.faults.stale_after = 1  # the pooled connection is now silently dead
    t0 = time.monotonic()
    assert f.read(b, 0, 5000) == b"b" * 5000
    assert time.monotonic() - t0 < 2.0 + 1  # the 2 s stale bound, then a fresh connection
