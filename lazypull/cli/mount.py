"""``lazypull mount`` / ``umount``: an image's rootfs mounted lazily from its registry.

A foreground mount serves until Ctrl-C/SIGTERM or until its mount point is unmounted
(``lazypull umount`` or plain ``umount``), then removes everything and exits; an
interrupt during start-up leaves nothing mounted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from lazypull.cli.imageargs import warnings_in_one_line
from lazypull.errors import LazypullError
from lazypull.fs.fuse.server import is_mounted
from lazypull.imagefs.rootfs import (
    DEFAULT_CACHE_DIR,
    DEFAULT_STATE_ROOT,
    MountOptions,
    mount_image,
    mount_stats,
    state_dir_for,
    umount_image,
)
from lazypull.registry.options import add_registry_args, options_from_args
from lazypull.registry.stores import open_store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("mount", help="mount an image's rootfs lazily", description=__doc__)
    p.add_argument("--no-prefetch", action="store_true", help="do not prefetch prioritized files")
    p.add_argument("--no-background-fetch", action="store_true", help="fetch only what is read")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_ROOT, help=argparse.SUPPRESS)
    p.add_argument(
        "--fetch-timeout",
        type=_seconds,
        default=60.0,
        help="one deadline per read, retries and body included: seconds before it fails with EIO",
    )
    p.add_argument(
        "--passthrough",
        action="store_true",
        help="kernel reads fully cached files directly (native speed; slower small-file opens)",
    )
    p.add_argument(
        "--suid", action="store_true", help="honour the image's setuid bits (default nosuid: images are untrusted)"
    )
    p.add_argument("--dev", action="store_true", help="allow opening the image's device nodes (default nodev)")
    p.add_argument("--daemon", action="store_true", help="return once mounted (layers keep serving)")
    p.add_argument("--stats", action="store_true", help="show per-layer statistics of MOUNTPOINT and exit")
    add_registry_args(p)
    p.add_argument("args", nargs="+", metavar="REF MOUNTPOINT", help="image reference and mount point")
    p.set_defaults(func=run)
    u = sub.add_parser("umount", help="unmount a lazypull mount and stop its processes")
    u.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_ROOT, help=argparse.SUPPRESS)
    u.add_argument("mountpoint", type=Path)
    u.set_defaults(func=run_umount)


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return v


def run_umount(args: argparse.Namespace) -> int:
    mp = Path(args.mountpoint)
    if not state_dir_for(mp, args.state_dir).exists():  # never unmounts what lazypull did not mount
        raise LazypullError(f"{mp} is not mounted by lazypull")
    umount_image(mp, args.state_dir)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.stats:
        return show_stats(Path(args.args[-1]), args.state_dir)
    if len(args.args) != 2:
        print("usage: lazypull mount [options] REF MOUNTPOINT", file=sys.stderr)
        return 2
    ref, mountpoint = args.args[0], Path(args.args[1])
    warnings_in_one_line()  # a layer downloaded whole is named, with its size
    ropts = options_from_args(args)
    opts = MountOptions(
        prefetch=not args.no_prefetch,
        background_fetch=not args.no_background_fetch,
        cache_dir=args.cache_dir,
        state_root=args.state_dir,
        fetch_timeout_sec=args.fetch_timeout,
        passthrough=args.passthrough,
        suid=args.suid,
        dev=args.dev,
    )
    interrupted = threading.Event()

    def on_signal(*_: object) -> None:
        if not interrupted.is_set():  # the first one interrupts; cleanup itself is not interrupted
            interrupted.set()
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        mount_image(open_store(ref, ropts), mountpoint, opts, ropts)  # cleans up after itself on any error
    except KeyboardInterrupt:
        print(f"lazypull: interrupted while mounting {ref}; nothing left mounted", file=sys.stderr)
        return 130
    print(f"mounted {ref} at {mountpoint}", flush=True)
    if args.daemon:
        return 0
    try:
        while not interrupted.wait(0.5):
            _reap_children()
            if not is_mounted(mountpoint):
                print(f"{mountpoint} was unmounted; stopping", flush=True)
                break
    except KeyboardInterrupt:
        pass
    umount_image(mountpoint, args.state_dir)
    _reap_children()
    print(f"unmounted {mountpoint}")
    return 0


def _reap_children() -> None:
    """Layer processes are our children: collect those that exited (no zombies)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def show_stats(mountpoint: Path, state_root: Path) -> int:
    rows = mount_stats(mountpoint, state_root)
    from rich.console import Console
    from rich.table import Table

    t = Table("layer", "mode", "size", "fetched", "prefetched", "cache hits", "served")
    for r in rows:
        t.add_row(
            str(r["digest"])[7:19],
            "lazy" if r["lazy"] else "unpacked",
            str(r.get("size", "")),
            str(r.get("fetched_bytes", "")),
            str(r.get("prefetched_bytes", "")),
            f"{r.get('cache_hits', '')}/{r.get('cache_requests', '')}",
            str(r.get("bytes_served", "")),
        )
    Console().print(t)
    return 0
