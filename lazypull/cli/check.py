"""``lazypull check``: verify an eStargz image's footers, TOCs and (``--full``) every chunk.

Exit status 0: every layer verified and lazily pullable; 1: a layer failed verification;
3: verified, but some layers have no index (not converted) and would be pulled in full."""

from __future__ import annotations

import argparse
import sys

from lazypull.convert.check import check_image
from lazypull.oci.types import Platform
from lazypull.registry.options import add_registry_args, options_from_args
from lazypull.registry.stores import open_store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check", help="verify an eStargz image", description=__doc__)
    p.add_argument("--full", action="store_true", help="also fetch and verify every chunk")
    p.add_argument("--platform", help="os/arch[/variant] (default: this machine's)")
    p.add_argument("--all-platforms", action="store_true")
    add_registry_args(p)
    p.add_argument("ref", help="oci:DIR[:TAG] or a registry reference")
    p.set_defaults(func=run)


NOT_LAZY = 3  # exit status: every layer verified, but some would be pulled in full


def run(args: argparse.Namespace) -> int:
    store = open_store(args.ref, options_from_args(args))
    reports = check_image(
        store,
        full=args.full,
        platform=Platform.parse(args.platform) if args.platform else None,
        all_platforms=args.all_platforms,
    )
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        t = Table("layer", "kind", "entries", "chunks", "bytes read", "result")
        for r in reports:
            result = ("[green]ok[/]" if r.lazy else "[yellow]not lazy[/]") if r.ok else f"[red]{r.error}[/]"
            t.add_row(r.digest[7:19], r.kind, str(r.entries), str(r.chunks_checked), str(r.bytes_read), result)
        Console().print(t)
    else:
        for r in reports:
            status = ("ok" if r.lazy else "not lazy") if r.ok else f"FAIL {r.error}"
            print(
                f"{r.digest}\t{r.kind}\tentries={r.entries}\tchunks={r.chunks_checked}\t"
                f"bytes_read={r.bytes_read}\t{status}"
            )
    failed = [r for r in reports if not r.ok]
    full_pulls = [r for r in reports if r.ok and not r.lazy]
    total = sum(r.bytes_read for r in reports)
    ok = len(reports) - len(failed) - len(full_pulls)
    print(f"{ok}/{len(reports)} layers ok, {total} bytes read", file=sys.stderr)
    if full_pulls and not failed:
        print(
            f"lazypull: {args.ref} is not lazily pullable: {len(full_pulls)} of {len(reports)} layers are neither "
            "eStargz/zstd:chunked nor indexed by a SOCI zTOC and would be pulled in full "
            "(lazypull convert makes an eStargz copy; lazypull soci create indexes it as it is)",
            file=sys.stderr,
        )
        return NOT_LAZY
    return 1 if failed else 0
