"""One request loop for every FUSE session of the process.

A few reader threads wait on one epoll set holding each session's clone fd (one-shot,
re-armed right after each read, so several threads can serve one busy layer). Metadata
requests (lookup, getattr, readdir, xattrs, statfs) are answered on the reader thread
from memory; requests that may wait for a registry (READ, OPEN with passthrough) go to a
bounded pool of data threads. So ``ls`` and ``stat`` of a layer answer while its reads
wait on a slow registry, and a hundred layers cost a handful of threads, not hundreds.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from lazypull.fs.fuse import protocol as p
from lazypull.fs.fuse.server import BUFSIZE, DATA_OPS, FuseSession
from lazypull.giveway import request_seen

log = logging.getLogger(__name__)

_ARM = select.EPOLLIN | select.EPOLLONESHOT


class ServeLoop:
    def __init__(
        self, readers: int = 4, data_threads: int = 16, on_dead: Callable[[FuseSession], None] | None = None
    ) -> None:
        self._ep = select.epoll()
        self._sessions: dict[int, FuseSession] = {}  # clone fd -> session
        self._lock = threading.Lock()
        self._data = ThreadPoolExecutor(max_workers=data_threads, thread_name_prefix="fuse-data")
        self.on_dead = on_dead
        for i in range(readers):
            threading.Thread(target=self._reader, name=f"fuse-{i}", daemon=True).start()

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

    def _reader(self) -> None:
        buf = bytearray(BUFSIZE)
        while True:
            try:
                events = self._ep.poll(1.0, 1)
            except InterruptedError:
                continue
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
                if opcode in DATA_OPS:
                    self._data.submit(s.dispatch, fd, bytes(req))
                else:
                    s.dispatch(fd, req)

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

    def drain(self) -> None:
        """Wait for the reads being served to be answered (call after removing every session)."""
        self._data.shutdown(wait=True)
