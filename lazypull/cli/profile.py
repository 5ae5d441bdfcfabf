"""``lazypull profile record / push / list / show / rm``: prefetch learned from real runs.

A profile names what an image's workload read first (files and ranges, per layer, in
first-access order). It is published beside the image as an OCI artifact referring to it
(the image is not rebuilt: its digest stays), and every node's snapshotter fetches what it
names ahead of the container on the image's first start. Writes use the write credentials
(--push-user, --push-docker-config), never the pull ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lazypull.errors import LazypullError
from lazypull.oci.types import Platform
from lazypull.prefetch.profile import Profile, merge
from lazypull.prefetch.publish import (
    ANNOTATION_CREATED,
    ANNOTATION_RUNS,
    fetch_profile,
    published,
    push_profile,
    remove_profiles,
)
from lazypull.registry.options import (
    add_push_credential_args,
    add_registry_args,
    options_from_args,
    push_options_from_args,
)
from lazypull.registry.repository import RegistryStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "profile",
        help="prefetch profiles: record what a workload reads, publish it beside the image",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s = p.add_subparsers(dest="profile_command", metavar="ACTION", required=True)

    rec = s.add_parser(
        "record",
        help="run the workload once on the image mounted lazily (runc) and write what it read as a profile",
    )
    rec.add_argument("--period", type=float, default=10.0, help="seconds the workload runs at most (default 10)")
    rec.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment (repeatable)")
    rec.add_argument("--cwd", help="working directory (default: the image's)")
    rec.add_argument(
        "--network", choices=["none", "host"], default="none", help="none: loopback only (default); host: the node's"
    )
    rec.add_argument("--workdir", type=Path, help="where the trial image and the container live (default: a temp dir)")
    rec.add_argument("--out", type=Path, help="write the profile here (default: stdout)")
    rec.add_argument("--push", action="store_true", help="also publish it, merged with the image's published profiles")
    _common(rec, write=True)
    rec.add_argument(
        "workload", nargs=argparse.REMAINDER, metavar="-- CMD...", help="the command to run (default: the image's)"
    )
    rec.set_defaults(func=run_record)

    push = s.add_parser("push", help="publish profile files (merged) as a referrer of the image")
    push.add_argument(
        "--merge-published", action="store_true", help="merge the image's published profiles in, then remove them"
    )
    _common(push, write=True)
    push.add_argument("files", nargs="+", type=Path, metavar="FILE", help="profile JSON (from profile record)")
    push.set_defaults(func=run_push)

    ls = s.add_parser("list", help="the image's published profiles, newest first")
    _common(ls)
    ls.set_defaults(func=run_list)

    show = s.add_parser("show", help="print the image's published profiles, merged (or one: --digest)")
    show.add_argument("--digest", help="only this profile artifact")
    _common(show)
    show.set_defaults(func=run_show)

    rm = s.add_parser("rm", help="delete the image's profiles (all, or --digest)")
    rm.add_argument("--digest", help="the profile artifact to delete (default: every one of the image)")
    _common(rm, write=True)
    rm.set_defaults(func=run_rm)


def _common(p: argparse.ArgumentParser, write: bool = False) -> None:
    p.add_argument("--platform", help="os/arch[/variant] (default: this machine's)")
    add_registry_args(p)
    if write:
        add_push_credential_args(p)
    p.add_argument("ref", help="a registry reference: the image")


def _store(args: argparse.Namespace, write: bool = False) -> tuple[RegistryStore, Platform | None]:
    if args.ref.startswith("oci:"):
        raise LazypullError("profiles live in a registry (found through OCI referrers); give a registry reference")
    opts = push_options_from_args(args) if write else options_from_args(args)
    return RegistryStore.open(args.ref, opts), Platform.parse(args.platform) if args.platform else None


def run_push(args: argparse.Namespace) -> int:
    profiles = []
    for f in args.files:
        try:
            profiles.append(Profile.parse(f.read_bytes()))
        except OSError as e:
            raise LazypullError(f"{f}: {e.strerror or e}") from None
    store, platform = _store(args, write=True)
    res = push_profile(store, merge(profiles), platform, merge_published=args.merge_published)
    how = "referrers API" if res.pushed_via == "api" else "referrers tag schema"
    print(res.profile.digest)
    gone = f"; replaced {len(res.replaced)}" if res.replaced else ""
    print(f"profile of {res.image.digest} pushed ({how}){gone}; the image is unchanged", file=sys.stderr)
    return 0


def run_list(args: argparse.Namespace) -> int:
    store, platform = _store(args)
    subject, found = published(store, platform)
    for d in found:
        runs, created = d.annotations.get(ANNOTATION_RUNS, ""), d.annotations.get(ANNOTATION_CREATED, "")
        print(f"{d.digest}\t{d.size}\t{subject.digest}\t{runs}\t{created}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    store, platform = _store(args)
    subject, found = published(store, platform)
    chosen = [d for d in found if args.digest in (None, d.digest)]
    if args.digest and not chosen:
        raise LazypullError(f"{args.digest} is not a prefetch profile of {store.name}")
    if not chosen:
        raise LazypullError(f"{store.name} ({subject.digest}) has no prefetch profile")
    profile = merge([fetch_profile(store.client, store.ref, subject.digest, d) for d in chosen])
    print(json.dumps(profile.to_json(), indent=1))
    return 0


def run_rm(args: argparse.Namespace) -> int:
    store, platform = _store(args, write=True)
    for d in remove_profiles(store, args.digest, platform):
        print(d)
    return 0


def run_record(args: argparse.Namespace) -> int:
    from lazypull.optimize.optimizer import OptimizeOptions
    from lazypull.optimize.profilerecord import record_profile
    from lazypull.soci.create import image_manifest

    workload = args.workload[1:] if args.workload[:1] == ["--"] else args.workload
    store, platform = _store(args)
    subject, manifest = image_manifest(store, platform)

    def say(msg: str) -> None:
        print(f"profile record: {msg}", file=sys.stderr, flush=True)

    opts = OptimizeOptions(
        period=args.period,
        entrypoint=workload or None,
        args=[] if workload else None,
        env=args.env,
        cwd=args.cwd,
        network=args.network,
        workdir=args.workdir,
        progress=say,
    )
    if platform is not None:
        opts.convert.platforms = [platform]
    profile, _run = record_profile(store, subject, manifest, opts)
    body = json.dumps(profile.to_json(), indent=1) + "\n"
    if args.out:
        args.out.write_text(body)
    else:
        sys.stdout.write(body)
    if args.push:
        wstore, _ = _store(args, write=True)
        res = push_profile(wstore, profile, platform, merge_published=True)
        say(f"pushed {res.profile.digest} beside {res.image.digest}")
    return 0
