"""``lazypull snapshotter``: run the containerd remote snapshotter daemon."""

from __future__ import annotations

import argparse

from lazypull.service.args import add_args


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("snapshotter", help="run the containerd snapshotter daemon (proxy plugin)", description=__doc__)
    add_args(p)
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    from lazypull.service.main import serve  # grpc and the snapshotter: only for this command

    return serve(args)
