"""The README demo: the seed's image, full pull vs lazy pull, side by side."""

from __future__ import annotations

import os
import sys

from lazypull.bench.runner import BenchConfig, run_bench


def main() -> int:
    scale = float(os.environ.get("DEMO_SCALE", "1"))
    rate = os.environ.get("DEMO_RATE", "150mbit")

    def progress(msg: str) -> None:
        print(f"demo: {msg}", flush=True)

    cfg = BenchConfig(
        images=["seed-large"], modes=["overlayfs", "lazypull"], runs=1, rate=rate, scale=scale, progress=progress
    )
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
