"""One time limit for a whole operation: connecting, retrying and every byte of the body.

Socket timeouts bound one wait only: a registry that trickles a byte a second, or that
answers the headers and then stalls between small packets, never trips them. A
*deadline scope* gives everything inside it (on this thread) one absolute deadline. The
transport caps each attempt's socket timeouts by the time left; in an *enforced* scope a
watchdog also shuts down the sockets the scope is using when the deadline passes, so a
read blocked in ``recv`` returns at once, whatever the library around it does.

Connections are claimed by the scope that sends a request on them and handed to the
enclosing enforced scope when an inner one ends (a body read after the request returned
stays bounded); a connection put back into the pool and then claimed by another thread
is no longer the scope's to shut down.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_local = threading.local()


class Deadline:
    """An absolute deadline (``time.monotonic()`` seconds) and the connections it watches."""

    __slots__ = ("at", "conns", "enforce", "fired", "parent")

    def __init__(self, at: float, enforce: bool, parent: Deadline | None) -> None:
        self.at: float = min(at, parent.at) if parent is not None else at
        self.enforce = enforce
        self.parent = parent
        self.conns: set[Any] = set()
        self.fired = False  # the watchdog shut this scope's connections down

    def remaining(self) -> float:
        return self.at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.at

    def enforcing(self) -> Deadline | None:
        """The nearest enforced scope: this one or an enclosing one."""
        d: Deadline | None = self
        while d is not None and not d.enforce:
            d = d.parent
        return d


def current() -> Deadline | None:
    return getattr(_local, "scope", None)


def remaining(default: float) -> float:
    """Seconds left in the current scope (*default* outside any scope)."""
    d = current()
    return d.remaining() if d is not None else default


@contextmanager
def deadline_scope(
    seconds: float | None = None, *, at: float | None = None, enforce: bool = True
) -> Iterator[Deadline]:
    """Run the block under one deadline (*seconds* from now, or absolute *at*).

    Nested scopes never extend an outer deadline. With *enforce*, sockets in use when the
    deadline passes are shut down (blocked reads end with an error)."""
    if at is None:
        at = time.monotonic() + (seconds if seconds is not None else 0.0)
    parent = current()
    d = Deadline(at, enforce, parent)
    _local.scope = d
    if enforce:
        _watchdog.add(d)
    try:
        yield d
    finally:
        _local.scope = parent
        if enforce:
            _watchdog.discard(d)
            heir = parent.enforcing() if parent is not None else None
            for conn in list(d.conns):
                if getattr(conn, "_lp_scope", None) is d:
                    conn._lp_scope = heir
                    if heir is not None:
                        heir.conns.add(conn)
            d.conns.clear()


def claim(conn: Any) -> None:
    """*conn* is about to be used by this thread: the current enforced scope watches it."""
    d = current()
    owner = d.enforcing() if d is not None else None
    conn._lp_scope = owner
    if owner is not None:
        owner.conns.add(conn)


def _shutdown(conn: Any) -> None:
    for sock in (getattr(conn, "sock", None), getattr(conn, "_lp_raw", None)):
        if sock is None:
            continue
        try:
            # The plain socket's shutdown, also for TLS sockets: it ends a blocked recv
            # without touching the SSL object another thread is inside.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except (OSError, TypeError, ValueError):
            pass


class _Watchdog:
    """One thread for all scopes: sleeps until the earliest deadline, then fires it."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._live: set[int] = set()
        self._seq = itertools.count()
        self._ended = 0  # scopes ended before their deadline, still in the heap
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, d: Deadline) -> None:
        with self._cond:
            self._live.add(id(d))
            heapq.heappush(self._heap, (d.at, next(self._seq), d))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True, name="deadline-watchdog")
                self._thread.start()
            elif self._heap[0][2] is d:
                self._cond.notify()

    def discard(self, d: Deadline) -> None:
        with self._cond:
            if id(d) in self._live:
                self._live.discard(id(d))
                self._ended += 1
            if self._ended > 1024 and self._ended * 2 > len(self._heap):  # most scopes end early
                self._heap = [e for e in self._heap if id(e[2]) in self._live]
                heapq.heapify(self._heap)
                self._ended = 0

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and id(self._heap[0][2]) not in self._live:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait(5.0)
                    continue
                at, _, d = self._heap[0]
                delay = at - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                self._live.discard(id(d))
                d.fired = True
                conns = [c for c in list(d.conns) if getattr(c, "_lp_scope", None) is d]
            for c in conns:
                _shutdown(c)


_watchdog = _Watchdog()
