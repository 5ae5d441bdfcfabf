"""``lazypull snapshotter``: run the containerd remote snapshotter daemon."""

from __future__ import annotations

import argparse

from lazypull.service.main import add_args, serve


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("snapshotter", help="run the containerd snapshotter daemon (proxy plugin)", description=__doc__)
    add_args(p)
    p.set_defaults(func=serve)
