"""The README demo: the seed's image, full pull vs lazy pull, side by side.

It runs for minutes, so each phase says what it does as it starts (:func:`explain`)."""

from __future__ import annotations

import os
import shlex
import sys

from lazypull.bench.images import IMAGES
from lazypull.bench.runner import BenchConfig, run_bench

IMAGE = "seed-large"


def plan(scale: float, rate: str, background_fetch: bool) -> list[str]:
    """What the demo is about to do, before it starts."""
    data_mb = 20 * max(1 << 20, int(50_000_000 * scale)) / 1e6  # as _seed_payload writes them
    fetch = "on" if background_fetch else "off (only what the container reads is fetched: the bytes show it)"
    return [
        f"the image: Debian bookworm with vim, plus twenty files of random text (~{data_mb:.0f} MB of data)",
        f"the container runs {shlex.join(IMAGES[IMAGE].workload)}: it starts a shell and reads none of the data;",
        f"  each start is timed until it prints {IMAGES[IMAGE].expect!r}",
        "phases: build the image, convert it to eStargz, then start it twice with cold caches:",
        "  full pull (containerd + overlayfs) and lazy pull (containerd + the lazypull snapshotter)",
        f"the registry sits behind a {rate} link; lazypull's background fetch is {fetch}",
    ]


def explain(msg: str, rate: str) -> str | None:
    """What the phase *msg* (a bench progress line) starts doing, or None."""
    if msg.startswith("[net] registry"):
        return f"everything the node pulls now crosses the {rate} link, as from a remote registry"
    if msg.startswith("[images] building"):
        return "building: debootstrap (cached after the first run) + the data files, pushed as a plain gzip image"
    if msg.startswith("[images] converting"):
        return "converting: lazypull convert rewrites each layer as eStargz (files compressed one by one, with a TOC)"
    if msg.startswith("[run]") and msg.endswith("starting the container"):
        if " overlayfs " in msg:
            return "full pull: ctr pulls and unpacks every layer, then creates and starts the container"
        if " lazypull " in msg:
            return "lazy pull: ctr-remote mounts the eStargz layers; the container reads only the chunks it needs"
    return None


def main() -> int:
    scale = float(os.environ.get("DEMO_SCALE", "1"))
    rate = os.environ.get("DEMO_RATE", "150mbit")

    def progress(msg: str) -> None:
        print(f"demo: {msg}", flush=True)
        why = explain(msg, rate)
        if why:
            print(f"demo:   {why}", flush=True)

    cfg = BenchConfig(
        images=[IMAGE], modes=["overlayfs", "lazypull"], runs=1, rate=rate, scale=scale, progress=progress
    )
    for line in plan(scale, rate, cfg.background_fetch):
        print(f"demo: {line}", flush=True)
    try:
        results = run_bench(cfg)
    except Exception as e:
        print(f"demo: FAILED: {e}", file=sys.stderr)
        return 1
    full = next(r for r in results if r.mode == "overlayfs")
    lazy = next(r for r in results if r.mode == "lazypull")
    print()
    print(f"seed-large image (scale {scale:g}) over a {rate} link, cold caches:")
    print(f"  {'':22}{'full pull (overlayfs)':>24}{'lazy pull (lazypull)':>24}")
    print(f"  {'pull':22}{full.pull_s:23.2f}s{lazy.pull_s:23.2f}s")
    print(f"  {'create + run':22}{full.create_s + full.run_s:23.2f}s{lazy.create_s + lazy.run_s:23.2f}s")
    print(f"  {'total, to output':22}{full.total_s:23.2f}s{lazy.total_s:23.2f}s")
    print(f"  {'MB from the registry':22}{full.bytes / 1e6:24.1f}{lazy.bytes / 1e6:24.1f}")
    print(f"\n  speed-up: {full.total_s / lazy.total_s:.1f}x, {full.bytes / max(lazy.bytes, 1):.0f}x fewer bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
