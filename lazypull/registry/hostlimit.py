"""At most N requests in flight to one registry host from this process, whatever layer asks.

The layer server serves every lazily mounted layer of the node, so its limit is the node's:
a deployment starting many images at once does not open hundreds of connections to one
registry (which rate-limits or refuses them). A request waits for a slot no longer than its
deadline allows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from lazypull.registry import deadline as dl


class SlotTimeout(Exception):
    """No request slot for the host came free before the deadline."""


class HostLimits:
    def __init__(self) -> None:
        self._busy: dict[str, int] = {}
        self._waiting: dict[str, int] = {}
        self._cond = threading.Condition()

    @contextmanager
    def slot(self, host: str, limit: int, default_timeout: float) -> Iterator[None]:
        """Hold a slot of *host*: wait while *limit* requests to it are in flight."""
        end = time.monotonic() + max(dl.remaining(default_timeout), 0.0)
        with self._cond:
            self._waiting[host] = self._waiting.get(host, 0) + 1
            try:
                while self._busy.get(host, 0) >= limit:
                    left = end - time.monotonic()
                    if left <= 0:
                        raise SlotTimeout(f"{host}: all {limit} request slots stayed busy until the deadline")
                    self._cond.wait(left)
            finally:
                self._waiting[host] -= 1
            self._busy[host] = self._busy.get(host, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._busy[host] -= 1
                self._cond.notify_all()

    def waiting(self) -> dict[str, int]:
        with self._cond:
            return {h: n for h, n in self._waiting.items() if n}


HOST_LIMITS = HostLimits()  # one per process: the layer server's is the node's
