"""``lazypull bench``: time-to-start and bytes fetched, lazy vs full pull, on a shaped network.

The registry runs in a network namespace created for the run (veth pair, private /30,
egress shaped with tc tbf); every run starts from cold caches (fresh containerd root
and snapshotter root). Results go to bench/results/<date>/: results.csv (one row per
run), results.md (medians, min-max) and chart.png (stacked pull/create/run bars).
Needs root, containerd, runc, ctr-remote, docker-registry, debootstrap.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lazypull.bench.images import IMAGES

if TYPE_CHECKING:
    from lazypull.bench.runner import BenchConfig


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark lazy vs full pull",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--images",
        default="seed-large",
        help=f"comma-separated: {', '.join(IMAGES)}, node-scale, cluster (or all: every image but those two)",
    )
    p.add_argument("--nodes", type=int, default=8, help="cluster: nodes starting the image at once (default 8)")
    p.add_argument(
        "--via",
        default="cache,direct",
        help="cluster: comma-separated: cache (the zone cache), direct (to origin), cache-killed (dies mid-pull)",
    )
    p.add_argument("--kill-cache-after", type=float, default=1.0, help="cluster, cache-killed: seconds into the run")
    p.add_argument("--node-images", type=int, default=5, help="node-scale: number of images (default 5)")
    p.add_argument("--node-layers", type=int, default=20, help="node-scale: distinct layers per image (default 20)")
    p.add_argument(
        "--concurrent", action="store_true", help="node-scale: also pull all images at once (after one at a time)"
    )
    p.add_argument(
        "--modes",
        default="overlayfs,lazypull,lazypull-opt",
        help="comma-separated: overlayfs, lazypull, lazypull-opt, lazypull-learned (the lazypull image plus a"
        " prefetch profile recorded by one earlier run), lazypull-soci, reference, cri (a pod over CRI, private"
        " registry), podman (full pull), podman-lazypull (through lazypull store)",
    )
    p.add_argument("--runs", type=int, default=3, help="runs per image and mode (default 3)")
    p.add_argument("--rate", default="150mbit", help="registry bandwidth as tc understands it (default 150mbit)")
    p.add_argument("--rtt-ms", type=float, default=0.0, help="add this round-trip latency (userspace relay)")
    p.add_argument("--scale", type=float, default=1.0, help="shrink generated payloads (seed-large: 0.1 = ~140 MB)")
    p.add_argument(
        "--background-fetch",
        action="store_true",
        help="let lazy modes fetch whole layers in the background (counts those bytes too)",
    )
    p.add_argument("--soci-span-size", type=int, default=4 << 20, help="lazypull-soci: zTOC span size (4 MiB)")
    p.add_argument("--reference-snapshotter", metavar="PATH", help="containerd-stargz-grpc binary for mode reference")
    p.add_argument("--workdir", type=Path, default=Path("bench/work"), help="image cache and scratch space")
    p.add_argument("--out", type=Path, help="results directory (default bench/results/<date>)")
    p.add_argument("--report-only", type=Path, metavar="CSV", help="only redraw table and chart from a results.csv")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lazypull.bench.report import chart, markdown, read_csv, write_csv
    from lazypull.bench.runner import run_bench

    out = args.out or Path("bench/results") / datetime.date.today().isoformat()
    if args.report_only:
        results = read_csv(args.report_only)
        out = args.report_only.parent
    else:
        images = list(IMAGES) if args.images == "all" else args.images.split(",")
        cfg = bench_config(args)
        results = run_bench(cfg) if cfg.images else []
        out.mkdir(parents=True, exist_ok=True)
        if "node-scale" in images:
            _node_scale(args, cfg, out)
        if "cluster" in images:
            _cluster(args, cfg, out)
        if not results:
            return 0
        write_csv(results, out / "results.csv")
    table = markdown(results)
    (out / "results.md").write_text(table)
    files = "results.csv, results.md, chart.png"
    try:
        chart(results, out / "chart.png", f"time to start at {getattr(args, 'rate', '')}".strip())
    except ModuleNotFoundError as e:  # matplotlib is an extra: the tables are the results
        if e.name != "matplotlib":
            raise
        files = "results.csv, results.md"
        print(
            "lazypull bench: no chart.png: matplotlib is not installed (pip install 'lazypull[bench]', then "
            f"lazypull bench --report-only {out / 'results.csv'})",
            file=sys.stderr,
        )
    print(table)
    print(f"results in {out}/ ({files})")
    return 0


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The run's settings from the command line: every option that shapes a run lands here."""
    from lazypull.bench.runner import BenchConfig

    images = list(IMAGES) if args.images == "all" else args.images.split(",")
    modes = args.modes.split(",")
    if args.reference_snapshotter and "reference" not in modes:
        modes.append("reference")
    return BenchConfig(
        images=[i for i in images if i not in ("node-scale", "cluster")],
        modes=modes,
        runs=args.runs,
        rate=args.rate,
        rtt_ms=args.rtt_ms,
        scale=args.scale,
        workdir=args.workdir,
        reference_snapshotter=args.reference_snapshotter,
        background_fetch=args.background_fetch,
        soci_span_size=args.soci_span_size,
    )


def _node_scale(args: argparse.Namespace, cfg: object, out: Path) -> None:
    from lazypull.bench import nodescale

    base = nodescale.NodeScaleSpec(args.node_images, args.node_layers)
    specs = [base] + ([nodescale.NodeScaleSpec(base.images, base.layers, True)] if args.concurrent else [])
    ns = nodescale.run_node_scale(cfg, specs, runs=args.runs)  # type: ignore[arg-type]
    nodescale.write_csv(ns, out / "node-scale.csv")
    table = nodescale.markdown(ns)
    (out / "node-scale.md").write_text(table)
    print(table)
    print(f"node-scale results in {out}/ (node-scale.csv, node-scale.md)")


def _cluster(args: argparse.Namespace, cfg: BenchConfig, out: Path) -> None:
    from dataclasses import replace

    from lazypull.bench import cluster

    modes = [m for m in cfg.modes if m in ("overlayfs", "lazypull", "reference")]
    res = cluster.run_cluster(replace(cfg, modes=modes), args.nodes, args.via.split(","), args.kill_cache_after)
    table = cluster.markdown(res)
    name = f"cluster-{args.nodes}.md"
    (out / name).write_text(table)
    print(table)
    print(f"cluster results in {out}/{name}")
