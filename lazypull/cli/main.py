"""``lazypull`` entry point: one sub-command per module in this package.

Each command module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (taking the parsed args, returning an exit code). No logic lives here. A command
line naming a command imports that command's module only: start-up stays short.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from lazypull import __version__
from lazypull.errors import ConfigError, LazypullError, log_level

# Modules under lazypull.cli that provide commands, in help order.
COMMAND_MODULES = [
    "convert",
    "optimize",
    "copy",
    "check",
    "unpack",
    "mount",
    "store",
    "soci",
    "index",
    "profile",
    "ls",
    "cat",
    "cp",
    "snapshotter",
    "status",
    "bench",
]
# Commands a module registers besides the one named after it.
OTHER_COMMANDS = {"umount": "mount"}


def command_module(argv: list[str]) -> str | None:
    """The module of the command *argv* names, or None (help, --version, a typo: all of them)."""
    args = iter(argv)
    for a in args:
        if a == "--log-level":
            next(args, None)
        elif a.startswith("-"):
            if not a.startswith("--log-level="):
                return None
        else:
            name = OTHER_COMMANDS.get(a, a)
            return name if name in COMMAND_MODULES else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with *only*, just that command module's commands."""
    parser = argparse.ArgumentParser(
        prog="lazypull", description="Lazy pulling of container images (eStargz, zstd:chunked)."
    )
    parser.add_argument("--version", action="version", version=f"lazypull {__version__}")
    parser.add_argument(
        "--log-level", type=_log_level, help="debug, info, warning or error (default: warning; snapshotter: info)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in [only] if only else COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"lazypull.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"lazypull.cli.{name}":
                continue  # command not built yet
            raise
        mod.register(sub)
    return parser


def _log_level(text: str) -> str:
    try:
        return log_level(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--version"]:  # without importing every command (grpc, the registry stack)
        print(f"lazypull {__version__}")
        return 0
    parser = build_parser(command_module(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, (args.log_level or "warning").upper(), logging.WARNING),  # the snapshotter: its own
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from lazypull.service.notify import raise_fd_limit

    raise_fd_limit()  # unpack holds a directory fd per level (up to the 1024 levels a layer may nest)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:  # a usage error, like argparse's
        print(f"lazypull: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except LazypullError as e:
        print(f"lazypull: error: {_one_line(str(e))}", file=sys.stderr)
        return 1
    except OSError as e:  # a path the user gave: missing, not a directory, no permission, ...
        what = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "") + _needs_root(e)
        print(f"lazypull: error: {_one_line(what)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lazypull: interrupted", file=sys.stderr)
        return 130


def _needs_root(e: OSError) -> str:
    """What to do when a user's command hits the root-owned runtime state (mounts)."""
    name = os.fsdecode(e.filename) if isinstance(e.filename, str | bytes) else ""
    if isinstance(e, PermissionError) and os.geteuid() != 0 and (name + "/").startswith("/run/lazypull/"):
        return " (mounting images needs root: FUSE mounts, their state in /run/lazypull; run it with sudo)"
    return ""


def _one_line(text: str) -> str:
    """Errors may quote hostile input (names from a layer): never more than one line."""
    return " ".join(text.split("\n")).replace("\r", " ")


if __name__ == "__main__":
    sys.exit(main())
