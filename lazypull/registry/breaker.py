"""Per-host circuit breaker: a mirror that just failed is skipped for a while.

Without it every fetch of every layer on the node would first spend its share of the
fetch deadline on a dead or hung mirror before going to the next host. After a failure
the host is skipped for ``base`` seconds, doubling with each further failure up to
``ceiling``; once that time is over one request tries it again, and a success closes the
breaker. A throttling host (``Retry-After`` longer than the deadline) is skipped for
as long as it asked. The registry itself (the last host) is never skipped: it is the
last resort.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class _State:
    until: float = 0.0
    failures: int = 0


class Breakers:
    def __init__(self, base: float = 5.0, ceiling: float = 120.0) -> None:
        self.base = base
        self.ceiling = ceiling
        self._hosts: dict[str, _State] = {}
        self._lock = threading.Lock()

    def allow(self, host: str) -> bool:
        """Whether a request may go to *host* now (its breaker is closed or its time is over)."""
        with self._lock:
            st = self._hosts.get(host)
            return st is None or time.monotonic() >= st.until

    def failure(self, host: str) -> float:
        """*host* failed: skip it for a while (longer for each failure in a row); the seconds."""
        with self._lock:
            st = self._hosts.setdefault(host, _State())
            st.failures += 1
            wait = min(self.ceiling, self.base * 2.0 ** (st.failures - 1))
            st.until = time.monotonic() + wait
            return wait

    def throttled(self, host: str, seconds: float) -> None:
        """*host* asked to be left alone for *seconds* (Retry-After)."""
        with self._lock:
            st = self._hosts.setdefault(host, _State())
            st.until = max(st.until, time.monotonic() + min(seconds, self.ceiling))

    def success(self, host: str) -> None:
        with self._lock:
            self._hosts.pop(host, None)

    def reset(self) -> None:
        """Close every breaker (a process whose earlier hosts are gone, e.g. between tests,
        where a port a skipped mirror had may serve another one next)."""
        with self._lock:
            self._hosts.clear()

    def open_hosts(self) -> dict[str, float]:
        """Hosts being skipped now, with the seconds left."""
        now = time.monotonic()
        with self._lock:
            return {h: st.until - now for h, st in self._hosts.items() if st.until > now}


BREAKERS = Breakers()  # one per process: the layer server's is the node's
