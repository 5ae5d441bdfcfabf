"""The daemon's command line, apart from the daemon: ``lazypull snapshotter --help`` and
every other ``lazypull`` command load without grpc and the snapshotter."""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

DEFAULT_ADDRESS = "/run/containerd-lazypull-grpc/containerd-lazypull-grpc.sock"
DEFAULT_ROOT = "/var/lib/containerd-lazypull-grpc"
DEFAULT_CONFIG = "/etc/containerd-lazypull-grpc/config.toml"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=DEFAULT_ADDRESS, help="unix socket to serve containerd on")
    p.add_argument("--root", default=DEFAULT_ROOT, help="state: metadata, snapshots, cache")
    p.add_argument(
        "--config", help=f"TOML config (the reference daemon's keys; default {DEFAULT_CONFIG}, if it exists)"
    )
    p.add_argument("--log-level", help="debug, info, warning or error (default: the config's log_level, else info)")
    p.add_argument(
        "--fsd-address", default="", help="the layer server's socket (default ROOT/fsd.sock; started if not running)"
    )


_SUN_PATH_MAX = 107


def status_socket(address: str | Path) -> Path:
    """The daemon's status socket, beside its containerd socket *address* (one per daemon);
    where that name is too long for a unix socket, one derived from *address* under /run."""
    a = Path(address)
    p = a.with_name(a.stem + "-status.sock")
    if len(os.fsencode(p)) <= _SUN_PATH_MAX:
        return p
    digest = hashlib.sha256(os.fsencode(a.absolute())).hexdigest()[:16]
    return Path("/run/containerd-lazypull-grpc") / f"status-{digest}.sock"
