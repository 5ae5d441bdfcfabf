"""lazypull-fsd: one long-lived process serving every lazily mounted layer of the node.

The command. Serving is :mod:`lazypull.service.layerserver`, imported only to serve: the
unit's ExecReload (``--reload``) runs this binary to start its successor and wait for it,
and imports no more than the client (:mod:`lazypull.fs.fsdclient`): ~40 ms of the
machine's CPU while containers read, not the server's ~140 (docs/operations.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lazypull.errors import ConfigError, log_level
from lazypull.fs.fsdclient import DEFAULT_MEMORY, reload, socket_path


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", required=True, help="state directory (saved layer table, lock, socket)")
    p.add_argument("--address", default="", help="control socket (default ROOT/fsd.sock)")
    p.add_argument("--memory-bytes", type=int, default=DEFAULT_MEMORY, help="memory cache for all layers")
    p.add_argument(
        "--index-memory-bytes", type=int, default=0, help="memory for layers' indexes being built (0: 1/8 of RAM)"
    )
    p.add_argument(
        "--image-memory-bytes",
        dest="image_index_memory_bytes",
        type=int,
        default=0,
        help="of which one image's layers may hold (0: half)",
    )
    p.add_argument("--readers", type=int, default=4, help="threads reading FUSE requests")
    p.add_argument("--data-threads", type=int, default=16, help="threads serving reads that may fetch")
    p.add_argument("--exit-when-idle", action="store_true", help="exit once the last layer is unmounted")
    p.add_argument(
        "--takeover",
        action="store_true",
        help="take the layers over from the server running on ROOT (an upgrade without a gap), then serve",
    )
    p.add_argument(
        "--reload",
        action="store_true",
        help="start this binary with --takeover beside the running server and wait until it took over (ExecReload)",
    )
    p.add_argument("--log-level", default="info")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lazypull-fsd", description=__doc__.split("\n\n")[0])
    add_args(p)
    args = p.parse_args(argv)
    try:
        args.log_level = log_level(str(args.log_level))
    except ConfigError as e:
        print(f"lazypull-fsd: error: {e}", file=sys.stderr)
        return 2  # a configuration mistake, as every command says it
    if args.reload:
        logging.basicConfig(
            level=getattr(logging, str(args.log_level).upper(), logging.INFO),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        return reload(Path(args.address) if args.address else socket_path(Path(args.root)))
    from lazypull.service.layerserver import serve

    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
