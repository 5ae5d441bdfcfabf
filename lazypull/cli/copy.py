"""``lazypull copy``: copy an image between OCI layouts and registries."""

from __future__ import annotations

import argparse

from lazypull.cli.progress import layer_progress
from lazypull.convert.copy import copy_image
from lazypull.oci.types import Platform
from lazypull.registry.stores import add_src_dst_args, open_src_dst


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("copy", help="copy an image between layouts and registries", description=__doc__)
    plat = p.add_mutually_exclusive_group()
    plat.add_argument("--platform", help="copy only this platform (os/arch[/variant])")
    plat.add_argument("--all-platforms", action="store_true", default=True, help="copy every platform (default)")
    add_src_dst_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    src, dst = open_src_dst(args)
    with layer_progress() as progress:
        desc = copy_image(
            src,
            dst,
            tag=dst.tag,
            platform=Platform.parse(args.platform) if args.platform else None,
            all_platforms=not args.platform,
            progress=progress,
        )
    dst.close()  # a docker-archive destination is written here
    print(desc.digest)
    return 0
