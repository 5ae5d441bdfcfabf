"""Prometheus metrics, collected on scrape from the layer server's ``Stats`` call.

Series use the names the seed guide's recording rules and the reference daemon's
dashboards expect (``stargz_fs_operation_duration_seconds``, ``stargz_cache_*``,
``stargz_bytes_downloaded_total``, ``stargz_fs_operation_*``), so both keep working.

Labels stay bounded: per layer (the node's mounted layers), per operation, and per
registry host for ``lazypull_fetch_duration_seconds`` — the first ``MAX_HOSTS`` hosts seen
keep their name, later ones count as ``other``.

``lazypull_registry_*{host}`` count what each host a request really went to (a mirror, a
cache or the registry) was asked and answered: the layer server's lazy reads and the
daemon's manifest lookups together.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from lazypull.errors import LazypullError
from lazypull.opstats import BUCKETS, Histogram
from lazypull.registry.hoststats import registry_host_stats
from lazypull.registry.reference import Reference
from lazypull.service.firstread import FIRST_READS

if TYPE_CHECKING:
    from lazypull.snapshot.snapshotter import Snapshotter


MAX_HOSTS = 16
OTHER_HOST = "other"


class LayerStatsCollector(Collector):
    def __init__(self, snapshotter: Snapshotter) -> None:
        self.sn = snapshotter
        self._hosts: dict[str, None] = {}  # registry hosts with a label of their own (first seen)

    def host_label(self, ref: object) -> str:
        try:
            host = Reference.parse(str(ref)).registry
        except LazypullError:
            return OTHER_HOST
        if host not in self._hosts and len(self._hosts) < MAX_HOSTS:
            self._hosts[host] = None
        return host if host in self._hosts else OTHER_HOST

    def collect(self) -> Iterator[Metric]:
        server = self.sn.layers.server_stats()
        stats = list(server.get("layers") or [])
        FIRST_READS.update(self.sn.book, stats)  # lazypull_*_first_read_seconds, observed once each
        hist = HistogramMetricFamily(
            "stargz_fs_operation_duration_seconds", "Latency of filesystem operations", labels=["operation"]
        )
        ms = HistogramMetricFamily(
            "stargz_fs_operation_duration_milliseconds",
            "Latency of filesystem operations (reference daemon's series)",
            labels=["operation_type", "layer"],
        )
        count = CounterMetricFamily(
            "stargz_fs_operation_count", "Filesystem operations", labels=["operation_type", "layer"]
        )
        served = CounterMetricFamily("stargz_fs_bytes_served", "Bytes served to readers", labels=["layer"])
        hits = CounterMetricFamily("stargz_cache_hits", "Chunk cache hits")
        reqs = CounterMetricFamily("stargz_cache_requests", "Chunk cache lookups")
        down = CounterMetricFamily("stargz_bytes_downloaded", "Compressed bytes fetched from registries")
        size = GaugeMetricFamily("lazypull_layer_size_bytes", "Compressed layer size", labels=["layer"])
        fetched = GaugeMetricFamily("lazypull_layer_fetched_bytes", "Bytes fetched per layer", labels=["layer"])
        pre = GaugeMetricFamily("lazypull_layer_prefetched_bytes", "Bytes prefetched per layer", labels=["layer"])
        compact = GaugeMetricFamily(
            "lazypull_layer_index_compact",
            "1 once the layer is served from its compact index, 0 while from its parsed TOC (in memory)",
            labels=["layer"],
        )
        ferr = CounterMetricFamily("lazypull_fetch_errors", "Failed registry fetches", labels=["layer"])
        verr = CounterMetricFamily("lazypull_verify_errors", "Chunks that failed verification", labels=["layer"])
        merr = CounterMetricFamily("lazypull_mount_errors", "Layer mounts that failed")
        health = GaugeMetricFamily(
            "lazypull_layer_health", "1 if the layer is served, 0 if it died or wedged", labels=["layer"]
        )
        for digest, healthy in self.sn.layers.health():
            health.add_metric([digest], 1.0 if healthy else 0.0)
        up = GaugeMetricFamily("lazypull_layer_server_up", "1 if the layer server answers")
        up.add_metric([], 1.0 if self.sn.layers.server_up else 0.0)
        restarts = CounterMetricFamily("lazypull_layer_server_restarts", "Layer server restarts seen")
        restarts.add_metric([], self.sn.layers.server_restarts)
        unhealthy = CounterMetricFamily("lazypull_layer_unhealthy", "Layers found dead or wedged")
        unhealthy.add_metric([], self.sn.layers.unhealthy_events)
        aborted = CounterMetricFamily(
            "lazypull_layer_aborted", "FUSE connections aborted: their requests stuck while other layers were served"
        )
        aborted.add_metric([], self.sn.layers.aborted)
        fetch_hist = HistogramMetricFamily(
            "lazypull_fetch_duration_seconds",
            "Latency of the lazy mounts' registry fetches (range requests, retries included), by registry host",
            labels=["host"],
        )
        by_host: dict[str, list[float]] = {}
        agg: dict[str, list[float]] = {}
        h_total = r_total = d_total = 0
        profile = {"profile_bytes": 0, "profile_chunk_bytes": 0, "profile_read_bytes": 0, "profile_unknown_files": 0}
        for s in stats:
            layer = str(s.get("layer", ""))
            h_total += int(s.get("cache_hits", 0))
            r_total += int(s.get("cache_requests", 0))
            d_total += int(s.get("fetched_bytes", 0))
            for k in profile:
                profile[k] += int(s.get(k, 0))
            size.add_metric([layer], float(s.get("size", 0)))
            fetched.add_metric([layer], float(s.get("fetched_bytes", 0)))
            pre.add_metric([layer], float(s.get("prefetched_bytes", 0)))
            if "index" in s:
                compact.add_metric([layer], 1.0 if s["index"] == "compact" else 0.0)
            ferr.add_metric([layer], float(s.get("fetch_errors", 0)))
            verr.add_metric([layer], float(s.get("verify_errors", 0)))
            served.add_metric([layer], float(s.get("bytes_served", 0)))
            if s.get("fetch"):
                _add(by_host.setdefault(self.host_label(s.get("ref")), _zeros()), s["fetch"])
            for op, row in (s.get("ops") or {}).items():
                a = agg.setdefault(op, [0.0] * (2 + len(BUCKETS) + 1))
                a[0] += row["count"]
                a[1] += row["sum"]
                for i, b in enumerate(row["buckets"]):
                    a[2 + i] += b
                count.add_metric([op, layer], row["count"])
                ms.add_metric([op, layer], _buckets(row["buckets"], 1000.0), row["sum"] * 1000.0)
        for op, a in agg.items():
            hist.add_metric([op], _buckets([int(x) for x in a[2:]], 1.0), a[1])
        for host, a in by_host.items():
            fetch_hist.add_metric([host], _buckets([int(x) for x in a[2:]], 1.0), a[1])
        hits.add_metric([], h_total)
        reqs.add_metric([], r_total)
        down.add_metric([], d_total)
        merr.add_metric([], self.sn.mount_errors)
        yield from (hist, ms, count, served, hits, reqs, down, size, fetched, pre, compact, ferr, verr, merr)
        yield from (health, up, restarts, unhealthy, aborted, fetch_hist)
        yield from _index_memory(server.get("index_memory") or {})
        yield from _profile(profile)
        hosts = dict(server.get("registry_hosts") or {})
        if server.get("pid") != os.getpid():  # the daemon's own requests (a separate layer server)
            for h, row in registry_host_stats().items():
                acc = hosts.setdefault(h, {})
                for k, v in row.items():
                    acc[k] = acc.get(k, 0.0) + v
        yield from self._registry_hosts(hosts)

    def _registry_hosts(self, hosts: dict[str, dict[str, float]]) -> Iterator[Metric]:
        help_ = {
            "requests": "Requests sent to the registry host (mirrors and caches included), retries included",
            "bytes": "Body bytes read from the registry host",
            "errors": "Requests to the registry host that failed (no answer, cut off, or 5xx)",
            "throttles": "429s (and 503s with Retry-After) from the registry host",
        }
        fams = {k: CounterMetricFamily(f"lazypull_registry_{k}", h, labels=["host"]) for k, h in help_.items()}
        skipped = GaugeMetricFamily(
            "lazypull_registry_host_skipped_seconds",
            "Seconds the host is still skipped after failing (its breaker is open)",
            labels=["host"],
        )
        waiting = GaugeMetricFamily(
            "lazypull_registry_requests_waiting",
            "Requests waiting for one of the host's request slots",
            labels=["host"],
        )
        merged: dict[str, dict[str, float]] = {}
        for h, row in hosts.items():
            acc = merged.setdefault(self.raw_host_label(h), {})
            for k, v in row.items():
                acc[k] = acc.get(k, 0.0) + float(v)
        for h, row in sorted(merged.items()):
            for k, fam in fams.items():
                fam.add_metric([h], row.get(k, 0.0))
            skipped.add_metric([h], row.get("skipped", 0.0))
            waiting.add_metric([h], row.get("waiting", 0.0))
        yield from (*fams.values(), skipped, waiting)

    def raw_host_label(self, host: str) -> str:
        if host not in self._hosts and len(self._hosts) < MAX_HOSTS:
            self._hosts[host] = None
        return host if host in self._hosts else OTHER_HOST


def _zeros() -> list[float]:
    return [0.0] * (2 + len(BUCKETS) + 1)


def _add(acc: list[float], row: Histogram) -> None:
    """Add one layer's {count, sum, buckets} to *acc* ([count, sum, b0..bn, +inf])."""
    acc[0] += float(row["count"])
    acc[1] += float(row["sum"])
    for i, b in enumerate(row["buckets"]):
        acc[2 + i] += b


def _buckets(counts: list[int], scale: float) -> list[tuple[str, float]]:
    out = []
    acc = 0
    for bound, n in zip([*BUCKETS, float("inf")], counts, strict=True):
        acc += n
        out.append(("+Inf" if bound == float("inf") else repr(bound * scale), float(acc)))
    return out


def _index_memory(im: dict[str, Any]) -> Iterator[Metric]:
    """The layer server's index memory budget (lazypull.fs.indexmemory)."""
    g = GaugeMetricFamily(
        "lazypull_index_memory_bytes",
        "Memory claimed by layers whose indexes are parsed and built, and its limits",
        labels=["kind"],
    )
    for kind in ("in_use", "peak", "budget", "per_image"):
        if kind in im:
            g.add_metric([kind], float(im[kind]))
    waiting = GaugeMetricFamily("lazypull_index_memory_waiting", "Layer opens waiting for index memory")
    waiting.add_metric([], float(im.get("waiting", 0)))
    refused = CounterMetricFamily(
        "lazypull_index_memory_refused", "Layer mounts refused for index memory (pulled in full instead)"
    )
    refused.add_metric([], float(im.get("refused", 0)))
    yield from (g, waiting, refused)


def _profile(totals: dict[str, int]) -> Iterator[Metric]:
    """What images' prefetch profiles fetched on the mounted layers, and how much of it was read."""
    for key, name, doc in (
        ("profile_bytes", "lazypull_profile_prefetched_bytes", "Compressed bytes fetched for prefetch profiles"),
        ("profile_chunk_bytes", "lazypull_profile_prefetched_content_bytes", "Content bytes prefetched for profiles"),
        ("profile_read_bytes", "lazypull_profile_prefetched_read_bytes", "Profile-prefetched content then read"),
        ("profile_unknown_files", "lazypull_profile_unknown_files", "Profile entries naming no file of the layer"),
    ):
        c = CounterMetricFamily(name, doc)
        c.add_metric([], float(totals[key]))
        yield c
