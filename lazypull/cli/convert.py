"""``lazypull convert``: turn an image into eStargz."""

from __future__ import annotations

import argparse
from pathlib import Path

from lazypull.cli.progress import layer_progress
from lazypull.convert.image import ConvertOptions, convert_image
from lazypull.convert.priority import PrefetchProfile, read_record
from lazypull.errors import LazypullError
from lazypull.format.tarstream import Prioritized
from lazypull.oci.types import Platform
from lazypull.registry.stores import add_src_dst_args, open_src_dst


def add_conversion_args(p: argparse.ArgumentParser) -> None:
    """The layer-format flags ``convert`` and ``optimize`` share."""
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--estargz", action="store_true", default=True, help="eStargz layers (default)")
    fmt.add_argument("--zstdchunked", action="store_true", help="zstd:chunked layers")
    p.add_argument("--oci", action="store_true", help="convert Docker media types to OCI")
    p.add_argument("--chunk-size", type=int, default=4 << 20, help="max uncompressed chunk size (default 4 MiB)")
    p.add_argument("--compression-level", type=int, default=9, help="gzip level 0-9 (default 9, as the reference)")
    p.add_argument("--platform", action="append", help="os/arch[/variant] (default: this machine's)")
    p.add_argument("--no-progress", action="store_true")


def conversion_options(args: argparse.Namespace, prioritized: Prioritized | None = None) -> ConvertOptions:
    return ConvertOptions(
        chunk_size=args.chunk_size,
        compression_level=args.compression_level,
        oci=args.oci,
        force=getattr(args, "force", False),
        prioritized=prioritized,
        platforms=[Platform.parse(p) for p in args.platform] if args.platform else None,
        all_platforms=getattr(args, "all_platforms", False),
        layer_format="zstdchunked" if args.zstdchunked else "estargz",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("convert", help="convert an image to eStargz", description=__doc__)
    add_conversion_args(p)
    p.add_argument("--all-platforms", action="store_true", help="every platform of an index (not with --platform)")
    p.add_argument("--record-in", type=Path, help='prioritized files: JSON lines with "path" (reference format)')
    p.add_argument("--prefetch-profile", type=Path, help='prioritized files: {"prefetch": {"landmarks", "patterns"}}')
    p.add_argument("--force", action="store_true", help="rebuild layers that are already eStargz")
    add_src_dst_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prioritized: Prioritized | None = None
    if args.record_in and args.prefetch_profile:
        raise LazypullError("use either --record-in or --prefetch-profile, not both")
    if args.all_platforms and args.platform:
        raise LazypullError("use either --platform or --all-platforms, not both")
    if args.record_in:
        prioritized = read_record(args.record_in)
    elif args.prefetch_profile:
        prioritized = PrefetchProfile.load(args.prefetch_profile).expand
    src, dst = open_src_dst(args)
    with layer_progress(False if args.no_progress else None) as progress:
        opts = conversion_options(args, prioritized)
        opts.progress = progress
        desc = convert_image(src, dst, opts, tag=dst.tag)
    dst.close()  # a docker-archive destination is written here
    print(desc.digest)
    return 0
