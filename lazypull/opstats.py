"""Per-operation FUSE statistics, served by the layer server's ``Stats`` call."""

from __future__ import annotations

import bisect
import threading
import time
from typing import TypedDict

BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


class Histogram(TypedDict):
    """One operation's latency histogram as the layer server reports it (JSON)."""

    count: int
    sum: float
    buckets: list[int]  # per bound of BUCKETS, then +Inf


class OpStats:
    """Count, total time and a latency histogram per FUSE operation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ops: dict[str, list[float]] = {}  # name -> [count, sum, b0..bn, +inf]
        # name -> (wall-clock start, seconds) of its first call: when a layer was first read,
        # and how long that cold read took (what a starting container waited for).
        self.first: dict[str, tuple[float, float]] = {}

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            row = self.ops.get(name)
            if row is None:
                row = self.ops[name] = [0.0] * (3 + len(BUCKETS))
                self.first[name] = (time.time() - seconds, seconds)
            row[0] += 1
            row[1] += seconds
            row[2 + bisect.bisect_left(BUCKETS, seconds)] += 1

    def snapshot(self) -> dict[str, Histogram]:
        with self._lock:
            return {
                name: {"count": int(r[0]), "sum": r[1], "buckets": [int(x) for x in r[2:]]}
                for name, r in self.ops.items()
            }

    def first_of(self, name: str) -> tuple[float, float] | None:
        """(wall-clock start, seconds) of the first *name* operation, if one happened."""
        with self._lock:
            return self.first.get(name)
