"""One request loop for every FUSE session of the process.

A few reader threads wait on one epoll set holding each session's clone fd (one-shot,
re-armed right after each read, so several threads can serve one busy layer). Metadata
requests (lookup, getattr, readdir, xattrs, statfs) are answered on the reader thread
from memory; requests that may wait for a registry (READ, OPEN with passthrough) go to a
bounded pool of data threads. So ``ls`` and ``stat`` of a layer answer while its reads
wait on a slow registry, and a hundred layers cost a handful of threads, not hundreds.

Isolation (docs/isolation.md): the data threads are shared out (:class:`~lazypull.giveway.Shares`)
so one layer's reads use at most half of them and one registry host's at most three
quarters; a hung registry leaves threads to the others. A read queued longer
than its layer's fetch timeout is answered EIO without running. A request for a layer
whose index is still being built (too large to be served from its parsed TOC) is parked,
not waited for on a reader thread, and handed on when the build ends (EIO after
:data:`~lazypull.fs.layer.BUILD_WAIT`).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from functools import partial

from lazypull.fs.fetcher import Fetcher
from lazypull.fs.fuse import protocol as p
from lazypull.fs.fuse.server import BUFSIZE, DATA_OPS, FuseSession
from lazypull.fs.layer import BUILD_WAIT
from lazypull.giveway import Shares, request_seen

log = logging.getLogger(__name__)

_ARM = select.EPOLLIN | select.EPOLLONESHOT
# Requests answered from a layer's index: parked while that index is being built.
_NEEDS_INDEX = frozenset(
    {p.LOOKUP, p.GETATTR, p.READLINK, p.OPEN, p.READ, p.GETXATTR, p.LISTXATTR, p.READDIR, p.READDIRPLUS, p.ACCESS}
)
LOG_EVERY = 10.0
DEFAULT_READ_WAIT = 60.0  # a read queued this long without a thread gets EIO (no fetch timeout known)


def _fetcher(s: FuseSession) -> Fetcher | None:
    f = getattr(s.fs, "fetcher", None)
    return f if isinstance(f, Fetcher) else None


class _Parked:
    """A request waiting for its layer's index build; answered once, either way."""

    __slots__ = ("deadline", "done", "fd", "req", "session")

    def __init__(self, session: FuseSession, fd: int, req: bytes, deadline: float) -> None:
        self.session, self.fd, self.req, self.deadline, self.done = session, fd, req, deadline, False


class ServeLoop:
    def __init__(
        self, readers: int = 4, data_threads: int = 16, on_dead: Callable[[FuseSession], None] | None = None
    ) -> None:
        self._ep = select.epoll()
        self._sessions: dict[int, FuseSession] = {}  # clone fd -> session
        self._lock = threading.Lock()
        limits = {"layer": max(1, data_threads // 2), "host": max(1, data_threads * 3 // 4)}
        self._data = Shares(data_threads, limits, name="fuse-data")
        self._after_build = Shares(2, {"layer": 1}, name="fuse-built")  # parked metadata, from memory
        self._parked: set[_Parked] = set()
        self._scan_at = 0.0  # when parked requests are next looked through for their deadline
        self._told: dict[str, float] = {}  # mountpoint -> when its reads' EIO was last logged
        self.on_dead = on_dead
        # Per reader thread: between taking an event and handing its request on (what a
        # drain waits for: a request read and not yet answered or queued is lost at exit).
        self._busy = [False] * readers
        for i in range(readers):
            threading.Thread(target=self._reader, args=(i,), name=f"fuse-{i}", daemon=True).start()

    def add(self, s: FuseSession) -> None:
        with self._lock:
            self._sessions[s.clone] = s
        self._ep.register(s.clone, _ARM)

    def remove(self, s: FuseSession) -> None:
        with self._lock:
            if self._sessions.pop(s.clone, None) is None:
                return
        try:
            self._ep.unregister(s.clone)
        except (OSError, ValueError):
            pass

    def __len__(self) -> int:
        return len(self._sessions)

    def _reader(self, i: int) -> None:
        buf = bytearray(BUFSIZE)
        busy = self._busy
        while True:
            try:
                events = self._ep.poll(1.0, 1)
            except InterruptedError:
                continue
            if self._parked and time.monotonic() >= self._scan_at:
                self._expire_parked()
            if not events:
                continue
            busy[i] = True  # before the session is looked up: a drain after remove() waits for us
            try:
                self._serve_events(events, buf)
            finally:
                busy[i] = False

    def _serve_events(self, events: list[tuple[int, int]], buf: bytearray) -> None:
        """Read and answer (or hand on) the requests *events* announce. Its own frame: a thread
        waiting in poll() keeps no session (and no layer's index) alive after an unmount."""
        for fd, _ev in events:
            s = self._sessions.get(fd)
            if s is None:
                continue
            try:
                n = os.readv(fd, [buf])
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EINTR, errno.ENOENT):
                    self._rearm(fd)  # ENOENT: interrupted before we read it
                    continue
                self._died(s, e)  # ENODEV: unmounted or aborted
                continue
            if n == 0:
                self._died(s, None)
                continue
            self._rearm(fd)
            request_seen()
            req = memoryview(buf)[:n]
            opcode = p.IN_HEADER.unpack_from(req)[1]
            if opcode in _NEEDS_INDEX and not getattr(s.fs, "ready", True) and self._park(s, fd, bytes(req)):
                continue
            if opcode in DATA_OPS:
                self.submit_data(s, fd, bytes(req))
            else:
                s.dispatch(fd, req)

    def submit_data(self, s: FuseSession, fd: int, req: bytes) -> None:
        """Queue a request that may wait for a registry, in its layer's and host's shares."""
        fetcher = _fetcher(s)
        wait = fetcher.timeout if fetcher is not None else DEFAULT_READ_WAIT
        host = fetcher.share if fetcher is not None and fetcher.share else "layer:" + _layer_key(s)
        keys = {"layer": _layer_key(s), "host": host}
        self._data.submit(
            partial(s.dispatch, fd, req),
            keys,
            expire_at=time.monotonic() + wait,
            on_expire=partial(self._read_expired, s, fd, req, host, wait),
        )

    def _read_expired(self, s: FuseSession, fd: int, req: bytes, host: str, wait: float) -> None:
        now = time.monotonic()
        if now - self._told.get(s.mountpoint, -LOG_EVERY) >= LOG_EVERY:  # one line per layer a while
            self._told[s.mountpoint] = now
            if len(self._told) > 1024:
                self._told.clear()
            log.warning(
                "layer at %s: reads waited %.0fs for a data thread (%s holds its share): EIO", s.mountpoint, wait, host
            )
        _eio(s, fd, req)

    # -- requests waiting for an index build ------------------------------------------------
    def _park(self, s: FuseSession, fd: int, req: bytes) -> bool:
        item = _Parked(s, fd, req, time.monotonic() + BUILD_WAIT)
        with self._lock:
            self._parked.add(item)
        if s.fs.when_built(partial(self._unpark, item)):  # type: ignore[attr-defined]
            return True
        with self._lock:
            self._parked.discard(item)  # built meanwhile: answer it now
        return False

    def _claim(self, item: _Parked) -> bool:
        with self._lock:
            if item.done:
                return False
            item.done = True
            self._parked.discard(item)
            return True

    def _unpark(self, item: _Parked) -> None:
        if not self._claim(item):
            return
        s, fd, req = item.session, item.fd, item.req
        if s.clone != fd:
            return  # closed meanwhile (unmounted): the kernel has failed the request already
        if p.IN_HEADER.unpack_from(req)[1] in DATA_OPS:
            self.submit_data(s, fd, req)
        else:
            self._after_build.submit(partial(s.dispatch, fd, req), {"layer": _layer_key(s)})

    def _expire_parked(self) -> None:
        now = time.monotonic()
        self._scan_at = now + 1.0  # thousands may be parked: looked through once a second
        with self._lock:
            late = [x for x in self._parked if x.deadline <= now]
        for x in late:
            if self._claim(x):
                log.warning("layer at %s: a request waited %.0fs for its index: EIO", x.session.mountpoint, BUILD_WAIT)
                _eio(x.session, x.fd, x.req)

    @property
    def parked(self) -> int:
        """Requests waiting for their layer's index build."""
        return len(self._parked)

    def _rearm(self, fd: int) -> None:
        try:
            self._ep.modify(fd, _ARM)
        except (OSError, ValueError):
            pass  # removed meanwhile

    def _died(self, s: FuseSession, e: OSError | None) -> None:
        self.remove(s)
        s.dead = True
        log.info("FUSE session at %s ended (%s)", s.mountpoint, e.strerror if e else "EOF")
        if self.on_dead is not None:
            self.on_dead(s)

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait for every request read to be answered (call after removing every session): those
        a reader thread holds, those queued or running on a data thread, and those parked for
        an index build. False if some were still unanswered after *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while any(self._busy) or self._parked:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return self._data.drain(max(0.0, deadline - time.monotonic()))


def _eio(s: FuseSession, fd: int, req: bytes) -> None:
    """Answer *req* with EIO without serving it (its layer could not be served in time)."""
    if s.clone != fd:
        return  # closed meanwhile: *fd* may be another file's by now
    s._reply(fd, p.IN_HEADER.unpack_from(req)[2], error=errno.EIO)


def _layer_key(s: FuseSession) -> str:
    """A session's share key: its identity (its fd number is another layer's once closed and
    reused, while work of the old one may still be queued or running)."""
    return f"{id(s):x}"
