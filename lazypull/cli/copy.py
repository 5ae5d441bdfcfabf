"""``lazypull copy``: copy an image between OCI layouts and registries."""

from __future__ import annotations

import argparse

from lazypull.cli.progress import layer_progress
from lazypull.convert.copy import copy_image
from lazypull.oci.types import Platform
from lazypull.registry.options import add_registry_args, options_from_args
from lazypull.registry.stores import open_store


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("copy", help="copy an image between layouts and registries", description=__doc__)
    plat = p.add_mutually_exclusive_group()
    plat.add_argument("--platform", help="copy only this platform (os/arch[/variant])")
    plat.add_argument("--all-platforms", action="store_true", default=True, help="copy every platform (default)")
    add_registry_args(p)
    p.add_argument("src", help="oci:DIR[:TAG] or a registry reference")
    p.add_argument("dst", help="oci:DIR[:TAG] or a registry reference")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ropts = options_from_args(args)
    src = open_store(args.src, ropts)
    dst = open_store(args.dst, ropts, for_push=True)
    with layer_progress() as progress:
        desc = copy_image(
            src,
            dst,
            tag=dst.tag,
            platform=Platform.parse(args.platform) if args.platform else None,
            all_platforms=not args.platform,
            progress=progress,
        )  # type: ignore[arg-type]
    print(desc.digest)
    return 0
