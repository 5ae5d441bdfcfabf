"""Where the reference snapshotter daemon (containerd-stargz-grpc) is, for side-by-side tests."""

from __future__ import annotations

import os
from pathlib import Path


def reference_daemon() -> Path | None:
    """$LAZYPULL_REFERENCE_SNAPSHOTTER, else shared/anchors/ in a folder above the checkout."""
    env = os.environ.get("LAZYPULL_REFERENCE_SNAPSHOTTER")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        cand = parent / "shared" / "anchors" / "containerd-stargz-grpc"
        if cand.exists():
            return cand
    return None
