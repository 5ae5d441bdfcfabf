"""Background work giving way to the requests a process serves, and to container starts.

An index build is pure Python: it holds the interpreter lock, and a thread answering a
FUSE request waits for that lock at each of its system calls. While a container starts
(hundreds of requests within a few hundred milliseconds) a build running beside it made
the start 0.09 s slower (small-files, measured; 0.21 s run phase with the build already
done, 0.30 s with it running). A layer being built is served meanwhile from its parsed
index, so its build can wait: it calls a :class:`Pacer` between steps, which sleeps while
requests were answered in the last few milliseconds, up to a bound per build (so a
layer under constant load still gets its compact index, and its memory back).

Builds also wait for the pull they belong to: a container starts right after its image's
last layer mounts, and most of its start is runc and containerd, not FUSE requests the
pacer could see. Builds run one at a time from one queue (:class:`Builds`), each once no
new layer has come for :data:`DEFER_SEC` (small-files, paired run by run with the
reference: its run phase 0.035 s behind with the build beside it, paced, 0.012 s with the
build after it). Waiting layers are served from their parsed index, so the wait is bounded
in time and in the entries held.

Work that may wait on a registry (reads, prefetches, background fetches) gives way the
other way round: :class:`Shares` runs it with a limit per layer, image or registry host,
so what waits on one of them leaves the threads the others need (docs/isolation.md)."""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable

from lazypull.heap import give_back

QUIET_SEC = 0.02  # no request for this long: the build goes on
STEP_SEC = 0.001
MAX_PAUSE_SEC = 2.0
DEFER_SEC = 1.0  # a build starts once no new layer came for this long ...
MAX_DEFER_SEC = 10.0  # ... or it has waited this long
# ... or the layers waiting hold this many entries in their parsed indexes (~0.7 KB each, measured).
DEFER_ENTRIES = 50_000
REAP_SEC = 0.5  # Shares: an item past its time is answered for within about this long
log = logging.getLogger(__name__)

_last_request = 0.0


def request_seen() -> None:
    """Called by the request loop for every request it reads."""
    global _last_request
    _last_request = time.monotonic()


class Pacer:
    """One build's way of giving way (its own pause budget)."""

    def __init__(self, max_pause: float = MAX_PAUSE_SEC) -> None:
        self.max_pause = max_pause
        self.paused = 0.0

    def __call__(self) -> None:
        while self.paused < self.max_pause and time.monotonic() - _last_request < QUIET_SEC:
            time.sleep(STEP_SEC)
            self.paused += STEP_SEC


class Build:
    """One queued build: *run* is called in the builds thread, unless cancelled first."""

    def __init__(self, queue: Builds, run: Callable[[], None], entries: int, defer: bool) -> None:
        self.queue, self.run, self.entries, self.defer = queue, run, entries, defer
        self.queued = time.monotonic()

    def cancel(self) -> bool:
        """Take it off its queue; False if it has started (or ended) already."""
        return self.queue.cancel(self)


class Builds:
    """The process's background builds, one at a time (under one interpreter lock, builds
    side by side only add up their peaks), each deferred as the module says."""

    def __init__(self, defer_sec: float = DEFER_SEC, max_defer_sec: float = MAX_DEFER_SEC) -> None:
        self.defer_sec, self.max_defer_sec = defer_sec, max_defer_sec
        self._queue: collections.deque[Build] = collections.deque()
        self._cond = threading.Condition()
        self._waiting_entries = 0
        self._last_queued = 0.0
        self._thread: threading.Thread | None = None

    def submit(self, run: Callable[[], None], entries: int, defer: bool = True) -> Build:
        """Queue *run* (which must not raise); *defer* False: it starts as soon as the builds
        before it are done (its layer cannot answer until it is built)."""
        b = Build(self, run, entries, defer)
        with self._cond:
            self._queue.append(b)
            self._waiting_entries += entries
            self._last_queued = b.queued
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="index-builds", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return b

    def cancel(self, b: Build) -> bool:
        """Take *b* off the queue; False if it has started (or ended) already."""
        with self._cond:
            if b not in self._queue:  # started, ended or cancelled already
                return False
            self._queue.remove(b)
            self._waiting_entries -= b.entries
            self._cond.notify_all()
            return True

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def _next(self) -> tuple[Build, float]:
        """The build to run next (one whose layer waits for it first) and when to start it."""
        b = next((x for x in self._queue if not x.defer), self._queue[0])
        if not b.defer or self._waiting_entries >= DEFER_ENTRIES:
            return b, 0.0
        return b, min(self._last_queued + self.defer_sec, b.queued + self.max_defer_sec)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._queue:
                        self._cond.wait()
                        continue
                    b, start_at = self._next()
                    delay = start_at - time.monotonic()
                    if delay <= 0:
                        break
                    del b  # not held while it waits: a build cancelled meanwhile lets its layer go
                    self._cond.wait(delay)
                self._queue.remove(b)
                self._waiting_entries -= b.entries
            try:
                b.run()
            except Exception:  # run() handles its own errors; the queue must go on regardless
                log.exception("a background build failed")
            del b  # while it waits for the next, the thread must not keep this one's layer alive
            give_back()  # the parsed index just freed: its pages go back to the system


#: The builds of this process (the layer server's).
builds = Builds()


class Shares:
    """Threads running work queued per key, each kind of key with a limit on how many of its
    items run at once: a hung registry, or a layer waiting on one, holds only its share of
    the threads, and the work of other keys goes past it.

    An item is labelled with one key per kind (say its layer and its registry host); it is
    let in once every one of its keys is under its kind's limit and a thread is free. Items
    that wait are let in queue by queue in turn, so a key with many items waiting does not
    starve one with a few. An item waiting past its *expire_at* is not run: its *on_expire*
    answers for it (EIO for a FUSE request), so a layer that cannot be served in time fails
    for itself; a thread of its own does that, as every worker may be held by a hung key.

    Items let in go to the workers through a :class:`queue.SimpleQueue`: a request costs
    what it cost on a thread pool (a condition variable per hand-off cost 60% more)."""

    def __init__(self, threads: int, limits: dict[str, int], name: str = "shares") -> None:
        self.threads, self.limits, self.name = threads, dict(limits), name
        self._waiting: collections.OrderedDict[tuple[str, str], collections.deque[_Item]] = collections.OrderedDict()
        self._running: dict[tuple[str, str], int] = {}
        self._in = 0  # items let in and not yet done (never more than the threads)
        self._ready: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # drain() waits on it
        self._started = False
        self._reaping = False

    def submit(
        self,
        run: Callable[[], None],
        keys: dict[str, str],
        *,
        expire_at: float | None = None,
        on_expire: Callable[[], None] | None = None,
    ) -> None:
        """Queue *run* under *keys* (kind -> value); the first kind's queue is the one it waits in."""
        item = _Item(run, tuple(keys.items()), expire_at, on_expire)
        with self._lock:
            if not self._started:
                self._started = True
                for i in range(self.threads):
                    threading.Thread(target=self._worker, name=f"{self.name}-{i}", daemon=True).start()
            if item.keys[0] not in self._waiting and self._free(item):
                self._let_in(item)
                return
            self._waiting.setdefault(item.keys[0], collections.deque()).append(item)
            if expire_at is not None and not self._reaping:
                self._reaping = True
                threading.Thread(target=self._reaper, name=f"{self.name}-expiry", daemon=True).start()

    def running(self, kind: str, value: str) -> int:
        with self._lock:
            return self._running.get((kind, value), 0)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or running (nothing new should be submitted meanwhile)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._waiting and not self._in, timeout)

    def _free(self, item: _Item) -> bool:
        """Whether *item* may run now (lock held)."""
        return self._in < self.threads and all(
            self._running.get(k, 0) < self.limits.get(k[0], self.threads) for k in item.keys
        )

    def _let_in(self, item: _Item) -> None:
        self._in += 1
        for k in item.keys:
            self._running[k] = self._running.get(k, 0) + 1
        self._ready.put(item)

    def _let_waiting_in(self) -> None:
        """Let in what now may run, one item per queue per round (lock held)."""
        while self._waiting and self._in < self.threads:
            moved = False
            for qkey in list(self._waiting):
                q = self._waiting[qkey]
                if self._free(q[0]):
                    self._let_in(q.popleft())
                    moved = True
                    if q:
                        self._waiting.move_to_end(qkey)  # its next item waits for the others' turn
                    else:
                        del self._waiting[qkey]
            if not moved:
                return

    def _worker(self) -> None:
        while True:
            item = self._ready.get()
            try:
                _call(item.run)
            finally:
                with self._lock:
                    self._in -= 1
                    for k in item.keys:
                        n = self._running[k] - 1
                        if n:
                            self._running[k] = n
                        else:
                            del self._running[k]
                    if self._waiting:
                        self._let_waiting_in()
                    elif not self._in:
                        self._idle.notify_all()
            del item  # an idle thread must not keep the last item's session (its layer) alive

    def _reaper(self) -> None:
        """Answer for the items that waited past their time, even while every thread is held."""
        while True:
            now = time.monotonic()
            expired: list[_Item] = []
            wake = now + REAP_SEC
            with self._lock:
                for qkey in list(self._waiting):
                    q = self._waiting[qkey]
                    while q and q[0].expire_at is not None and q[0].expire_at <= now:
                        expired.append(q.popleft())
                    if not q:
                        del self._waiting[qkey]
                    elif q[0].expire_at is not None:
                        wake = min(wake, q[0].expire_at)
                if expired and not self._waiting and not self._in:
                    self._idle.notify_all()
            for x in expired:
                _call(x.on_expire)
            expired = x = None  # type: ignore[assignment]  # (as in _worker)
            time.sleep(max(wake - time.monotonic(), 0.001))


class _Item:
    __slots__ = ("expire_at", "keys", "on_expire", "run")

    def __init__(
        self,
        run: Callable[[], None],
        keys: tuple[tuple[str, str], ...],
        expire_at: float | None,
        on_expire: Callable[[], None] | None,
    ) -> None:
        self.run, self.keys, self.expire_at, self.on_expire = run, keys, expire_at, on_expire


def _call(fn: Callable[[], None] | None) -> None:
    if fn is None:
        return
    try:
        fn()
    except Exception:  # one item's failure must not take a worker thread with it
        log.exception("queued work failed")
