"""Per registry host series: the layer server's counters and the daemon's own, summed."""

from __future__ import annotations

import os
from pathlib import Path

from lazypull.registry.hoststats import HOST_STATS
from lazypull.service.metrics import LayerStatsCollector
from lazypull.snapshot.snapshotter import RemoteSettings, Snapshotter


def test_registry_host_series(tmp_path: Path) -> None:
    sn = Snapshotter(tmp_path / "root", None, RemoteSettings(cache_dir=tmp_path / "cache", registry={}))
    try:
        HOST_STATS.add("manifests.example", requests=2, bytes=300)  # the daemon's own lookups
        rows = {
            "cache.zone:5000": {"requests": 10.0, "bytes": 4096.0, "errors": 1.0, "throttles": 0.0},
            "manifests.example": {"requests": 5.0, "bytes": 0.0, "errors": 0.0, "throttles": 2.0, "skipped": 7.5},
        }
        sn.layers.server_stats = lambda: {"pid": os.getpid() + 1, "registry_hosts": rows}  # type: ignore[method-assign]
        samples = {
            (s.name, s.labels.get("host")): s.value for fam in LayerStatsCollector(sn).collect() for s in fam.samples
        }
        assert samples[("lazypull_registry_requests_total", "cache.zone:5000")] == 10
        assert samples[("lazypull_registry_bytes_total", "cache.zone:5000")] == 4096
        assert samples[("lazypull_registry_errors_total", "cache.zone:5000")] == 1
        assert samples[("lazypull_registry_requests_total", "manifests.example")] >= 7  # both processes
        assert samples[("lazypull_registry_throttles_total", "manifests.example")] == 2
        assert samples[("lazypull_registry_host_skipped_seconds", "manifests.example")] == 7.5
    finally:
        sn.close()
