"""A ReadAt wrapper that counts what was read: how "lazy" a reader really is."""

from __future__ import annotations

import threading
import time

from lazypull.opstats import OpStats
from lazypull.source import ReadAt


class CountingSource:
    def __init__(self, inner: ReadAt) -> None:
        self.inner = inner
        self.bytes_read = 0
        self.reads = 0
        self.latency = OpStats()  # "fetch": each read of the source (a registry range request, retries included)
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.inner.size

    def read_at(self, offset: int, length: int) -> bytes:
        t0 = time.monotonic()
        data = self.inner.read_at(offset, length)
        self.latency.observe("fetch", time.monotonic() - t0)
        with self._lock:
            self.bytes_read += len(data)
            self.reads += 1
        return data
