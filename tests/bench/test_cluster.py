"""The cluster benchmark's report (the runs need root and network namespaces: `lazypull bench`)."""

from __future__ import annotations

import math

from lazypull.bench.cluster import ClusterResult, markdown


def test_quantiles_are_nearest_rank_and_failures_show() -> None:
    r = ClusterResult(
        "lazypull",
        "cache",
        8,
        start_s=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        origin_bytes=2_500_000,
        origin_requests=40,
    )
    assert (r.quantile(0.5), r.quantile(0.99), r.quantile(1)) == (4.0, 8.0, 8.0)
    failed = ClusterResult("overlayfs", "direct", 2, failures=2)
    assert math.isnan(failed.quantile(0.5))
    table = markdown([r, failed])
    assert "| lazypull | cache | 8 | 4.00 | 8.00 | 8.00 | 2.5 | 40 |" in table and table.rstrip().endswith("| 2 |")
