"""``lazypull snapshotter``: run the containerd remote snapshotter daemon.

Run by hand (not by systemd), SIGTERM or Ctrl-C also stops the layer server it started and
unmounts its layers, so nothing is left running; ``--keep-layers`` keeps them serving, as
the systemd service does across restarts."""

from __future__ import annotations

import argparse
import os

from lazypull.service.args import add_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("snapshotter", help="run the containerd snapshotter daemon (proxy plugin)", description=__doc__)
    add_args(p)
    p.add_argument(
        "--keep-layers", action="store_true", help="on exit, leave the layer server and its mounted layers running"
    )
    for action in p._actions:
        if action.dest == "log_level":
            action.default = argparse.SUPPRESS  # unset here: `lazypull --log-level X snapshotter` counts too
    p.set_defaults(func=serve)


def under_systemd() -> bool:
    """systemd sets INVOCATION_ID for the processes of a unit."""
    return bool(os.environ.get("INVOCATION_ID"))


def serve(args: argparse.Namespace) -> int:
    from lazypull.service.main import serve  # grpc and the snapshotter: only for this command

    args.stop_layers = not args.keep_layers and not under_systemd()
    return serve(args)
