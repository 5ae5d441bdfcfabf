"""``lazypull cat``: write files from inside an image to stdout, without pulling the image."""

from __future__ import annotations

import argparse
import shutil
import sys

from lazypull.cli.imageargs import add_image_args, open_from_args, print_stats, stdout_may_close


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cat", help="print files inside an image", description=__doc__)
    add_image_args(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="files in the image")
    p.set_defaults(func=run)


@stdout_may_close
def run(args: argparse.Namespace) -> int:
    with open_from_args(args) as img:
        for path in args.paths:
            with img.open(path) as f:
                shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()
        if args.stats:
            print_stats(img)
    return 0
