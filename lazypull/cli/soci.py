"""``lazypull soci create / list / rm / convert``: SOCI indexes for unconverted gzip layers.

``create`` writes a v1 index beside the image (a referrer: the image keeps its digest);
``convert`` writes a v2 "SOCI-enabled" image (the index packaged with it, what
soci-snapshotter v0.10+ reads by default)."""

from __future__ import annotations

import argparse
import sys

from lazypull.errors import LazypullError
from lazypull.format.soci.build import DEFAULT_SPAN_SIZE
from lazypull.oci.types import Platform
from lazypull.registry.options import add_registry_args, options_from_args
from lazypull.registry.repository import RegistryStore
from lazypull.soci.create import DEFAULT_MIN_LAYER_SIZE, LayerResult, create_index, list_indexes, remove_indexes
from lazypull.soci.v2 import convert_image


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("soci", help="SOCI indexes: lazy pulling without converting", description=__doc__)
    s = p.add_subparsers(dest="soci_command", metavar="ACTION", required=True)

    c = s.add_parser("create", help="build zTOCs and a SOCI index for an image and push them beside it")
    c.add_argument("--span-size", type=int, default=DEFAULT_SPAN_SIZE, help="uncompressed bytes between checkpoints")
    c.add_argument(
        "--min-layer-size", type=int, default=DEFAULT_MIN_LAYER_SIZE, help="smaller layers get no zTOC (fetched whole)"
    )
    _common(c)
    c.set_defaults(func=run_create)

    ls = s.add_parser("list", help="the SOCI indexes of an image")
    _common(ls)
    ls.set_defaults(func=run_list)

    cv = s.add_parser(
        "convert", help="write SRC as a SOCI-enabled image DST (SOCI index manifest v2; layers unchanged)"
    )
    cv.add_argument("--span-size", type=int, default=DEFAULT_SPAN_SIZE, help="uncompressed bytes between checkpoints")
    cv.add_argument(
        "--min-layer-size", type=int, default=DEFAULT_MIN_LAYER_SIZE, help="smaller layers get no zTOC (fetched whole)"
    )
    cv.add_argument("--platform", help="os/arch[/variant] to index (default: this machine's)")
    add_registry_args(cv)
    cv.add_argument("src", help="the image, a registry reference")
    cv.add_argument("dst", help="where to push the SOCI-enabled image (a registry reference)")
    cv.set_defaults(func=run_convert)

    rm = s.add_parser("rm", help="delete an image's SOCI indexes (all, or --digest)")
    rm.add_argument("--digest", help="the SOCI index to delete (default: every one of the image)")
    _common(rm)
    rm.set_defaults(func=run_rm)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--platform", help="os/arch[/variant] (default: this machine's)")
    add_registry_args(p)
    p.add_argument("ref", help="a registry reference")


def _store(args: argparse.Namespace) -> tuple[RegistryStore, Platform | None]:
    if args.ref.startswith("oci:"):
        raise LazypullError("SOCI indexes live in a registry (found through OCI referrers); give a registry reference")
    store = RegistryStore.open(args.ref, options_from_args(args))
    return store, Platform.parse(args.platform) if args.platform else None


def _report(r: LayerResult) -> None:
    if r.ztoc is not None:
        print(
            f"layer {r.digest} -> ztoc {r.ztoc.digest} ({r.files} files, {r.spans} spans, "
            f"{r.size / max(r.seconds, 1e-9) / 1e6:.0f} MB/s)",
            file=sys.stderr,
        )
    else:
        print(f"layer {r.digest}: no zTOC ({r.skipped})", file=sys.stderr)


def run_create(args: argparse.Namespace) -> int:
    store, platform = _store(args)
    res = create_index(
        store, span_size=args.span_size, min_layer_size=args.min_layer_size, platform=platform, progress=_report
    )
    assert res.index is not None
    how = "referrers API" if res.pushed_via == "api" else "referrers tag schema"
    print(res.index.digest)
    print(f"SOCI index of {res.image.digest} pushed ({how}); the image is unchanged", file=sys.stderr)
    return 0


def run_convert(args: argparse.Namespace) -> int:
    if args.src.startswith("oci:") or args.dst.startswith("oci:"):
        raise LazypullError("soci convert reads and writes registries; give registry references")
    opts = options_from_args(args)
    src = RegistryStore.open(args.src, opts)
    dst = RegistryStore.open(args.dst, opts, for_push=True)
    platform = Platform.parse(args.platform) if args.platform else None
    res = convert_image(
        src, dst, span_size=args.span_size, min_layer_size=args.min_layer_size, platform=platform, progress=_report
    )
    print(res.root.digest)
    print(
        f"SOCI-enabled image pushed: image {res.image.digest} (was {res.source.digest}, same layers), "
        f"SOCI index {res.index.digest}",
        file=sys.stderr,
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    store, platform = _store(args)
    subject, found = list_indexes(store, platform)
    for d in found:
        tool = d.annotations.get("com.amazon.soci.build-tool-identifier", "")
        print(f"{d.digest}\t{d.size}\t{subject.digest}\t{tool}")
    return 0


def run_rm(args: argparse.Namespace) -> int:
    store, platform = _store(args)
    for d in remove_indexes(store, args.digest, platform):
        print(d)
    return 0
