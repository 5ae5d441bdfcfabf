"""Per registry host counters (requests, bytes, errors, throttles), for the metrics.

Kept per process (the layer server's are the node's lazy reads, the daemon's its manifest
lookups) and keyed by the host a request really went to, mirrors included: which mirror
serves, which one fails and which one throttles is what an operator needs to see.
"""

from __future__ import annotations

import threading

MAX_HOSTS = 64  # later hosts count as "other": labels stay bounded
OTHER = "other"
FIELDS = ("requests", "bytes", "errors", "throttles")


class HostStats:
    def __init__(self) -> None:
        self._rows: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def add(self, host: str, **counts: int) -> None:
        with self._lock:
            if host not in self._rows and len(self._rows) >= MAX_HOSTS:
                host = OTHER
            row = self._rows.get(host)
            if row is None:
                row = self._rows[host] = dict.fromkeys(FIELDS, 0)
            for k, v in counts.items():
                row[k] += v

    def reset(self) -> None:
        """Forget every host (a process whose earlier hosts are gone, e.g. between tests:
        without it, the 65th host counts as "other")."""
        with self._lock:
            self._rows.clear()

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {h: dict(r) for h, r in self._rows.items()}


HOST_STATS = HostStats()


def registry_host_stats() -> dict[str, dict[str, float]]:
    """This process's counters per host, with ``skipped`` (seconds its breaker has left)
    and ``waiting`` (requests queued for one of its slots)."""
    from lazypull.registry.breaker import BREAKERS
    from lazypull.registry.hostlimit import HOST_LIMITS

    out: dict[str, dict[str, float]] = {
        h: {k: float(v) for k, v in r.items()} for h, r in HOST_STATS.snapshot().items()
    }
    for h, left in BREAKERS.open_hosts().items():
        out.setdefault(h, dict.fromkeys(FIELDS, 0.0))["skipped"] = left
    for h, n in HOST_LIMITS.waiting().items():
        out.setdefault(h, dict.fromkeys(FIELDS, 0.0))["waiting"] = float(n)
    return out
