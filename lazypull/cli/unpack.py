"""``lazypull unpack``: materialise an image's rootfs through the verified layer readers."""

from __future__ import annotations

import argparse
from pathlib import Path

from lazypull.cli.progress import unpack_progress
from lazypull.convert.unpack import unpack_image
from lazypull.oci.types import Platform
from lazypull.registry.options import add_registry_args, options_from_args
from lazypull.registry.stores import open_store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("unpack", help="unpack an image's rootfs into a directory", description=__doc__)
    p.add_argument("--platform", help="os/arch[/variant] (default: this machine's)")
    add_registry_args(p)
    p.add_argument("ref", help="oci:DIR[:TAG] or a registry reference")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    store = open_store(args.ref, options_from_args(args))
    platform = Platform.parse(args.platform) if args.platform else None
    with unpack_progress() as progress:
        n = unpack_image(store, args.dir, platform=platform, progress=progress)
    print(f"unpacked {n} layers into {args.dir}")
    return 0
