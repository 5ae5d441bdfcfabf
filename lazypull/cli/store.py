"""``lazypull store DIR``: serve an additional layer store for Podman/CRI-O at DIR.

Name it in ``/etc/containers/storage.conf`` (overlay driver)::

    [storage.options]
    additionallayerstores = ["/var/lib/lazypull-store/store:ref"]

Layers that can be read lazily (eStargz, zstd:chunked, gzip with a SOCI index) are mounted
by the node's layer server and used by containers/storage as they are; any other layer is
absent here, and Podman pulls it as usual. Serves until SIGTERM/Ctrl-C; the layers then stay
mounted (running containers use them) and a restarted store takes them up again.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from lazypull.fs.fsdclient import socket_path, start_server
from lazypull.fs.fuse.server import unmount
from lazypull.imagefs.rootfs import DEFAULT_CACHE_DIR, MountOptions
from lazypull.registry.options import add_registry_args, options_from_args
from lazypull.store.authfiles import auth_file
from lazypull.store.fs import StoreFS, StoreSession, serve
from lazypull.store.layers import StoreLayers

log = logging.getLogger("lazypull.store")

DEFAULT_STATE = Path("/var/lib/lazypull-store")
DEFAULT_FSD_ROOT = Path("/var/lib/containerd-lazypull-grpc")  # the node's layer server (its fsd.sock)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("store", help="serve an additional layer store for Podman/CRI-O", description=__doc__)
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE, help="where the layers are mounted")
    p.add_argument(
        "--fsd-root", type=Path, default=DEFAULT_FSD_ROOT, help="the layer server's root (started there if none runs)"
    )
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    p.add_argument("--no-background-fetch", action="store_true", help="fetch only what is read")
    add_registry_args(p)
    p.add_argument("dir", type=Path, help="the store's mount point (storage.conf: DIR:ref)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ropts = options_from_args(args)
    if ropts.docker_config is None:
        ropts.docker_config = auth_file()
    opts = MountOptions(
        prefetch=True,
        background_fetch=not args.no_background_fetch,
        cache_dir=args.cache_dir,
        state_root=args.state_dir,
    )
    args.fsd_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    client, _ = start_server(args.fsd_root, socket_path(args.fsd_root), log_path=args.fsd_root / "fsd.log")
    layers = StoreLayers(client, args.state_dir, opts, ropts)
    mountpoint = args.dir.resolve()
    mountpoint.mkdir(parents=True, exist_ok=True)
    session = StoreSession(StoreFS(layers), str(mountpoint))
    session.mount()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"serving the layer store at {mountpoint}", flush=True)
    try:
        serve(session, stop)
    finally:
        unmount(str(mountpoint))
        session.close()  # the layers stay mounted: containers run on them, a restarted store counts on
    return 0
