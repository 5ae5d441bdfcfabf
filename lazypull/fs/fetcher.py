"""Verified, cached, coalesced reads of one layer's chunks.

A read needs some chunks. Cached ones come from the cache; missing ones that sit
next to each other in the blob are fetched in ONE Range request, together with the
rest of the file up to a readahead window (sequential reads are the common case); a
reader moving sequentially through a file starts the next window's fetch in the background
before it needs it, so the link does not idle while one window is consumed.
Every chunk being fetched is registered as in flight first, so concurrent readers —
the kernel's readahead issues several reads at once — wait for that fetch instead of
starting overlapping ones. Bytes are decoded and verified by the layer index before
anyone sees them.

Deadlines: a read, whether it starts a fetch or waits for one, fails (-> EIO) within
``timeout`` seconds; the fetch it starts runs under that same deadline (a deadline
scope the registry transport enforces on its sockets, so a trickling or stalled
registry cannot hold a reader longer). A failed fetch is remembered for a moment
(``FAILED_HOLD``): the kernel retries a failed readahead with a synchronous read of the
same page at once, and that retry must not wait a second deadline.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from lazypull.cache.chunks import ChunkCache
from lazypull.errors import LazypullError
from lazypull.format.index import Chunk, Entry, EntryType, LayerIndex
from lazypull.registry.deadline import deadline_scope
from lazypull.source import ReadAt

log = logging.getLogger(__name__)

READAHEAD = 8 << 20  # fetch up to this much of the file's following chunks with a miss
MAX_SPAN = 16 << 20  # never one request larger than this
# On a miss, fetch at least this much of the blob: the next files of the same directory
# come along (numpy + scipy import: 332 -> 198 requests for +7% bytes; see docs/design.md).
MIN_FETCH = 64 << 10
PROFILE_WINDOW = 16 << 20  # a prefetch profile is fetched in first-access order at this grain ...
PROFILE_PARALLEL = 8  # ... its requests this many at a time
PROFILE_GAP = 256 << 10  # and a gap this small within one request
STREAM_SLACK = 1 << 20  # a read this close to where a file's sequential reading got to continues it
MAX_STREAMS = 256  # files per layer whose sequential reading is tracked
FAILED_HOLD = 2.0  # seconds a failed chunk fails again at once instead of being fetched again


def chunk_key(c: Chunk) -> tuple[int, int]:
    return (c.blob_offset, c.inner_offset)


def _file_offset(c: Chunk) -> int:
    return c.file_offset


@dataclass
class FetchStats:
    fetched_bytes: int = 0  # compressed bytes from the registry
    prefetched_bytes: int = 0
    background_bytes: int = 0
    profile_bytes: int = 0  # fetched for the image's prefetch profile (compressed)
    profile_chunk_bytes: int = 0  # the content of the chunks it fetched ...
    profile_read_bytes: int = 0  # ... and how much of that a reader then asked for (the hit ratio)
    profile_unknown_files: int = 0  # files it named that the layer does not have (ignored)
    requests: int = 0
    readaheads: int = 0  # next-window fetches started ahead of a sequential reader
    cache_hits: int = 0
    cache_requests: int = 0
    fetch_errors: int = 0
    verify_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


class FetchError(LazypullError):
    pass


class ReadAheadFailed(FetchError):
    """A speculative fetch failed; a reader that waited for it fetches for itself."""


class Fetcher:
    def __init__(
        self,
        index: LayerIndex,
        source: ReadAt,
        cache: ChunkCache,
        *,
        name: str = "layer",
        timeout: float = 60.0,
        min_fetch: int = MIN_FETCH,
        failed_hold: float = FAILED_HOLD,
        readahead: int = READAHEAD,
    ) -> None:
        self.index = index
        self.source = source
        self.cache = cache
        self.name = name
        self.timeout = timeout
        self.min_fetch = min_fetch
        self.failed_hold = failed_hold
        self.readahead = readahead
        self.stats = FetchStats()
        # The registry host its reads wait on (set by the layer server): reads are given
        # threads per host, so a hung registry holds only its share (loop.py).
        self.share = ""
        self._inflight: dict[tuple[int, int], Future[bytes]] = {}
        self._failed: dict[tuple[int, int], tuple[float, FetchError]] = {}  # chunk -> (until, error)
        self._lock = threading.Lock()
        self.active_reads = 0  # on-demand reads in progress (background fetch yields to them)
        self._idle = threading.Condition(self._lock)
        # file name -> (where its sequential reading has got to, bytes read in that run)
        self._streams: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._profiled: dict[tuple[int, int], int] = {}  # chunks the profile fetched, not yet read -> size

    # -- on-demand reads ------------------------------------------------------------------
    def read(self, entry: Entry, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of a regular file; raises FetchError (-> EIO)."""
        end = min(offset + size, entry.size)
        if offset >= end:
            return b""
        deadline = time.monotonic() + self.timeout
        with self._lock:
            self.active_reads += 1
        try:
            chunks = entry.chunks_for(offset, end - offset)
            parts = []
            for i, c in enumerate(chunks):
                data = self.chunk(entry, c, chunks[i:], deadline=deadline)
                lo = max(offset - c.file_offset, 0)
                hi = min(end - c.file_offset, c.size)
                parts.append(data[lo:hi])
            if self._streaming(entry.name, offset, end):
                self._read_ahead(entry, chunks[-1])
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            with self._lock:
                self.active_reads -= 1
                if self.active_reads == 0:
                    self._idle.notify_all()

    def chunk(
        self,
        entry: Entry,
        c: Chunk,
        wanted: list[Chunk] | None = None,
        *,
        deadline: float | None = None,
        retry: bool = True,
    ) -> bytes:
        """One verified chunk, from cache, an in-flight fetch, or a new coalesced fetch, by
        *deadline* (monotonic; default ``timeout`` from now)."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        self.stats.add(cache_requests=1)
        key = chunk_key(c)
        if self._profiled and (n := self._profiled.pop(key, 0)):
            self.stats.add(profile_read_bytes=n)
        for attempt in range(2):
            data = self.cache.get(c.digest)
            if data is not None:
                self.stats.add(cache_hits=1)
                return data
            with self._lock:
                failed = self._failed.get(key)
                if failed is not None:
                    if failed[0] > time.monotonic():
                        raise failed[1]
                    del self._failed[key]
                fut = self._inflight.get(key)
                mine: list[tuple[Entry, Chunk]] = []
                if fut is None:
                    if attempt == 0 and self.cache.contains(c.digest):
                        continue  # a fetch resolved it since the cache was asked: read it from there
                    mine = self._plan(entry, c, wanted or [c])
                    for _, m in mine:
                        self._inflight[chunk_key(m)] = Future()
                    fut = self._inflight[key]
            break
        assert fut is not None  # the second attempt, at the latest, plans the fetch
        if mine:
            self._fetch(mine, "fetched_bytes", deadline=deadline)
        try:
            return fut.result(timeout=max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            raise FetchError(f"{self.name}: {entry.name}: timed out after {self.timeout}s waiting for data") from None
        except ReadAheadFailed:
            if retry:  # the read-ahead it waited for failed: fetch for itself, once
                return self.chunk(entry, c, wanted, deadline=deadline, retry=False)
            raise

    def _plan(self, entry: Entry, first: Chunk, wanted: list[Chunk]) -> list[tuple[Entry, Chunk]]:
        """*first* plus what follows it in the blob that is missing and contiguous (lock held):
        the rest of the file up to the readahead window, then, while the request is still
        smaller than ``min_fetch``, the next files of the same directory (a registry round
        trip costs more than a few extra KB)."""
        out = [(entry, first)]
        span_end = first.blob_end
        idx = entry.chunks.index(first) if first in entry.chunks else -1
        following = entry.chunks[idx + 1 :] if idx >= 0 else []
        budget_end = first.blob_offset + max(self.readahead, sum(c.blob_end - c.blob_offset for c in wanted))
        for c in following:
            if (
                not span_end - 1 <= c.blob_offset <= span_end
                or c.blob_end > budget_end
                or c.blob_end - first.blob_offset > MAX_SPAN
            ):
                break
            if chunk_key(c) in self._inflight or self.cache.contains(c.digest):
                break
            out.append((entry, c))
            span_end = c.blob_end
        if (
            self.min_fetch
            and span_end - first.blob_offset < self.min_fetch
            and out[-1][1] is (following or [first])[-1]
        ):
            out += self._siblings_after(entry, span_end, first.blob_offset + self.min_fetch)
        keys = {chunk_key(c) for _, c in out}
        for _, c in list(out):
            for e2, c2 in self.index.chunks_sharing(c):  # SOCI: the other files of the span
                k = chunk_key(c2)
                if k not in keys and k not in self._inflight and not self.cache.contains(c2.digest):
                    keys.add(k)
                    out.append((e2, c2))
        return out

    def _streaming(self, name: str, offset: int, end: int) -> bool:
        """Whether *name* has now been read sequentially for a whole window or more. The
        kernel's concurrent readahead reorders reads a little, so "sequential" allows slack;
        page faults of a mapped library jump about and never qualify (numpy + scipy import:
        fetching ahead there cost 2 MB and 0.4 s)."""
        with self._lock:
            pos, run = self._streams.pop(name, (-1, 0))
            if abs(offset - pos) <= STREAM_SLACK:
                pos, run = max(pos, end), run + end - offset
            else:
                pos, run = end, end - offset
            self._streams[name] = (pos, run)
            if len(self._streams) > MAX_STREAMS:
                self._streams.popitem(last=False)
        return run >= self.readahead

    def _read_ahead(self, entry: Entry, last: Chunk) -> None:
        """While a file is streamed (:meth:`_streaming`), fetch the first missing chunk within
        two windows after *last*, with its window, in the background.

        The link then never idles while a window is decoded and consumed (seed-read, two
        50 MB files at 150 Mbit/s: run 4.96 s -> 4.71 s); a reader that stops early has
        cost at most two windows more."""
        chunks = entry.chunks
        i = bisect.bisect_right(chunks, last.file_offset, key=_file_offset) - 1
        if i < 0 or chunks[i] is not last:
            return
        limit = last.file_offset + last.size + 2 * self.readahead
        with self._lock:
            for c in chunks[i + 1 :]:
                if c.file_offset >= limit:
                    return
                key = chunk_key(c)
                if key in self._inflight or key in self._failed or self.cache.contains(c.digest):
                    continue
                mine = self._plan(entry, c, [c])
                for _, m in mine:
                    self._inflight[chunk_key(m)] = Future()
                break
            else:
                return
        self.stats.add(readaheads=1)
        deadline = time.monotonic() + self.timeout
        threading.Thread(
            target=self._fetch, args=(mine, "fetched_bytes", deadline, True), name="readahead", daemon=True
        ).start()

    def _siblings_after(self, entry: Entry, span_end: int, limit: int) -> list[tuple[Entry, Chunk]]:
        """Chunks of the files after *entry* in its directory while they are contiguous in the
        blob, missing, and the request stays under about *limit* (lock held). Files of one
        directory tend to be read together (a package's modules); other neighbours rarely are."""
        parent, _, base = entry.name.rpartition("/")
        siblings = self.index.children(parent)
        try:
            k = siblings.index(base)
        except ValueError:
            return []
        out: list[tuple[Entry, Chunk]] = []
        for name in siblings[k + 1 :]:
            e = self.index.lookup(f"{parent}/{name}" if parent else name)
            if e is None or e.type != EntryType.REG or not e.chunks:
                continue  # no data of its own in the blob
            if e.chunks[-1].blob_end - span_end > self.min_fetch:
                break  # a big file: not worth fetching on speculation
            for c in e.chunks:
                if c.blob_offset != span_end or chunk_key(c) in self._inflight or self.cache.contains(c.digest):
                    return out
                out.append((e, c))
                span_end = c.blob_end
            if span_end >= limit:
                break
        return out

    def _resolve(self, c: Chunk, data: bytes) -> None:
        with self._lock:
            fut = self._inflight.pop(chunk_key(c), None)
            self._failed.pop(chunk_key(c), None)
        if fut is not None:
            fut.set_result(data)

    def _fail(self, chunks: list[Chunk], err: FetchError, *, remember: bool = True) -> None:
        """Fail the readers waiting for *chunks*; with *remember*, also those that come within
        ``failed_hold``. A speculative fetch (read-ahead) is not remembered: a reader that
        gets there later fetches for itself instead of inheriting a failure it never saw."""
        until = time.monotonic() + self.failed_hold
        with self._lock:
            futs = [self._inflight.pop(chunk_key(c), None) for c in chunks]
            if not remember:
                chunks = []
            if len(self._failed) > 4096:  # only a moment's memory; never grows without bound
                now = time.monotonic()
                self._failed = {k: v for k, v in self._failed.items() if v[0] > now}
            for c in chunks:
                self._failed[chunk_key(c)] = (until, err)
        for f in futs:
            if f is not None and not f.done():
                f.set_exception(err)

    # -- prefetch and background fetch ------------------------------------------------
    def prefetch(self) -> int:
        """Fetch the prioritized range [0, prefetch_end) in one request; returns bytes fetched."""
        end = self.index.prefetch_end
        if end <= 0:
            return 0
        items = itertools.takewhile(lambda ec: ec[1].blob_offset < end, self.index.chunks_by_blob())
        return self._fetch_items((ec for ec in items if ec[1].blob_end <= end), "prefetched_bytes", max_span=end + 1)

    def profile_fetch(self, plan: list[tuple[str, list[tuple[int, int]]]], budget: int, stop: threading.Event) -> int:
        """Fetch what the image's prefetch profile names in this layer: *plan* is (path,
        [(offset, length), ...]) in first-access order (no ranges: the whole file). Up to
        *budget* bytes of content, in that order: windows of ``PROFILE_WINDOW`` bytes, each
        fetched in blob order, ``PROFILE_PARALLEL`` requests at a time (few round trips, the
        order kept at that grain). Files the layer does not have are skipped (a profile is a
        hint). Returns bytes fetched."""
        items: list[tuple[Entry, Chunk]] = []
        seen: set[tuple[int, int]] = set()
        used, full = 0, False
        for path, ranges in plan:
            if full:
                break
            e = self.index.lookup(path)
            if e is not None and e.type == EntryType.HARDLINK and e.link_name:
                e = self.index.lookup(e.link_name)
            if e is None or e.type != EntryType.REG:
                self.stats.add(profile_unknown_files=1)
                continue
            chunks = [c for off, n in (ranges or [(0, e.size)]) for c in e.chunks_for(off, n)]
            for c in chunks:
                if chunk_key(c) in seen:
                    continue
                if used + c.size > budget:  # the cut: what follows in the profile is not fetched
                    full = True
                    break
                seen.add(chunk_key(c))
                used += c.size
                items.append((e, c))
        before = self.stats.profile_bytes
        start = 0
        with ThreadPoolExecutor(PROFILE_PARALLEL, thread_name_prefix="profile") as pool:
            while start < len(items) and not stop.is_set():
                end, size = start, 0
                while end < len(items) and (size < PROFILE_WINDOW or end == start):
                    size += items[end][1].size
                    end += 1
                window = sorted(items[start:end], key=lambda ec: (ec[1].blob_offset, ec[1].inner_offset))
                start = end
                groups = self._claim_groups(window)
                self.stats.add(profile_chunk_bytes=sum(c.size for g in groups for _, c in g))
                list(pool.map(lambda g: self._fetch(g, "profile_bytes"), groups))
        return self.stats.profile_bytes - before

    def _claim_groups(self, window: list[tuple[Entry, Chunk]]) -> list[list[tuple[Entry, Chunk]]]:
        """The chunks of *window* (in blob order) neither cached nor in flight, claimed (in
        flight from now) in groups of one request each: a gap of up to ``PROFILE_GAP`` is
        fetched through, as a round trip costs more."""
        groups: list[list[tuple[Entry, Chunk]]] = []
        end = 0
        with self._lock:
            for e, c in window:
                key = chunk_key(c)
                if key in self._inflight or self.cache.contains(c.digest):
                    continue
                g = groups[-1] if groups else None
                if g and c.blob_offset - end <= PROFILE_GAP and c.blob_end - g[0][1].blob_offset <= MAX_SPAN:
                    g.append((e, c))
                    end = max(end, c.blob_end)
                else:
                    groups.append([(e, c)])
                    end = c.blob_end
                self._inflight[key] = Future()
                self._profiled[key] = c.size
        return groups

    def background_fetch(self, stop: threading.Event, pause_s: float = 0.05) -> int:
        """Fetch everything not yet cached, in large ranges, yielding to on-demand reads."""
        items = self.index.chunks_by_blob()
        return self._fetch_items(items, "background_bytes", stop=stop, yield_to_reads=True, pause_s=pause_s)

    def _fetch_items(
        self,
        items: Iterator[tuple[Entry, Chunk]],
        kind: str,
        *,
        max_span: int = MAX_SPAN,
        stop: threading.Event | None = None,
        yield_to_reads: bool = False,
        pause_s: float = 0.05,
    ) -> int:
        """Fetch *items* (in blob order, consumed as they go) in contiguous groups."""
        total = 0
        pending = next(items, None)
        while pending is not None:
            if stop is not None and stop.is_set():
                break
            if yield_to_reads:
                with self._lock:
                    while self.active_reads > 0:
                        self._idle.wait(0.5)
            group: list[tuple[Entry, Chunk]] = []
            with self._lock:
                while pending is not None:
                    e, c = pending
                    if chunk_key(c) in self._inflight or self.cache.contains(c.digest):
                        pending = next(items, None)
                        if group:
                            break
                        continue
                    if group and (
                        not (
                            group[-1][1].blob_end - 1 <= c.blob_offset <= group[-1][1].blob_end
                            or c.blob_offset == group[-1][1].blob_offset
                        )
                        or c.blob_end - group[0][1].blob_offset > max_span
                    ):
                        break
                    self._inflight[chunk_key(c)] = Future()
                    group.append((e, c))
                    pending = next(items, None)
            if not group:
                continue
            before = getattr(self.stats, kind)
            self._fetch(group, kind)
            total += getattr(self.stats, kind) - before
            if yield_to_reads and pause_s:
                time.sleep(0)  # let readers in between ranges
        return total

    def _fetch(
        self, group: list[tuple[Entry, Chunk]], kind: str, deadline: float | None = None, speculative: bool = False
    ) -> None:
        """One Range request for contiguous in-flight chunks, ending by *deadline* (default
        ``timeout`` from now); resolve or fail each one. A *speculative* fetch's failures are
        not remembered, and its waiters fetch for themselves."""
        failure = ReadAheadFailed if speculative else FetchError
        start, end = group[0][1].blob_offset, max(c.blob_end for _, c in group)
        try:
            with deadline_scope(at=deadline if deadline is not None else time.monotonic() + self.timeout):
                raw = self.source.read_at(start, end - start)
            self.stats.add(requests=1, **{kind: len(raw)})
        except Exception as e:
            self.stats.add(fetch_errors=1)
            log.error("%s: fetching [%d, %d) (%s) failed: %s", self.name, start, end, group[0][0].name, e)
            self._fail([c for _, c in group], failure(f"{self.name}: fetch failed: {e}"), remember=not speculative)
            return
        for ent, c in group:
            try:
                data = self.index.decode_chunk(c, raw[c.blob_offset - start : c.blob_end - start])
            except LazypullError as err:
                self.stats.add(verify_errors=1)
                log.error(
                    "%s: %s: chunk at file offset %d failed verification: %s", self.name, ent.name, c.file_offset, err
                )
                self._fail([c], failure(f"{self.name}: {ent.name}: {err}"), remember=not speculative)
                continue
            self.cache.put(c.digest, data)
            self._resolve(c, data)
