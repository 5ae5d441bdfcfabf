"""``lazypull optimize``: run the image's workload once, then convert it with the files it read prioritized.

Like ``ctr-remote image optimize``: the workload runs in a container (runc) on the image
mounted lazily, for at most ``--period`` seconds; the files it reads go first in each
layer, so a lazy start prefetches them in one request per layer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lazypull.cli.convert import add_conversion_args, conversion_options
from lazypull.cli.progress import layer_progress
from lazypull.optimize.optimizer import OptimizeOptions, optimize_image, write_record
from lazypull.optimize.workload import json_list
from lazypull.registry.stores import add_src_dst_args, open_src_dst


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "optimize",
        help="convert an image with the files its workload reads prioritized",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_conversion_args(p)
    p.add_argument("--period", type=float, default=10.0, help="seconds the workload runs at most (default 10)")
    p.add_argument(
        "--entrypoint", help='entrypoint as a JSON array, e.g. \'["/bin/sh", "-c"]\' (default: the image\'s)'
    )
    p.add_argument("--args", help="arguments as a JSON array (default: the image's Cmd)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment (repeatable)")
    p.add_argument("--cwd", help="working directory (default: the image's)")
    p.add_argument(
        "--network", choices=["none", "host"], default="none", help="none: loopback only (default); host: the node's"
    )
    p.add_argument("--record-out", type=Path, help="also write the recorded files (record format, for --record-in)")
    p.add_argument("--workdir", type=Path, help="where the trial image and the container live (default: a temp dir)")
    add_src_dst_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    src, dst = open_src_dst(args)

    def say(msg: str) -> None:
        print(f"optimize: {msg}", file=sys.stderr, flush=True)

    with layer_progress(False if args.no_progress else None) as progress:
        convert = conversion_options(args)
        convert.progress = progress
        opts = OptimizeOptions(
            convert=convert,
            period=args.period,
            entrypoint=json_list(args.entrypoint, "--entrypoint"),
            args=json_list(args.args, "--args"),
            env=args.env,
            cwd=args.cwd,
            network=args.network,
            workdir=args.workdir,
            progress=say,
        )
        result = optimize_image(src, dst, opts, tag=dst.tag)
    if args.record_out:
        write_record(args.record_out, result.record)
    print(result.descriptor.digest)
    return 0
