"""What ``lazypull ls``, ``cat`` and ``cp`` share: the image flags and opening the image."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lazypull.registry.options import add_registry_args, options_from_args

if TYPE_CHECKING:
    from lazypull.imagefs import ImageFS


def add_image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--platform", help="os/arch[/variant] (default: this machine's)")
    p.add_argument("--cache-dir", type=Path, help="verified chunk cache (default: ~/.cache/lazypull)")
    p.add_argument("--stats", action="store_true", help="print the bytes fetched vs the image's size to stderr")
    add_registry_args(p)
    p.add_argument("ref", help="oci:DIR[:TAG] or a registry reference")


def _one_line(message: Warning | str, category: type[Warning], *args: object, **kw: object) -> str:
    return f"lazypull: warning: {message}\n"


def warnings_in_one_line() -> None:
    """A streamed layer is said in one line, like the commands' errors (no source line)."""
    warnings.formatwarning = _one_line


def open_from_args(args: argparse.Namespace) -> ImageFS:
    from lazypull.imagefs import open_image  # the readers and the registry: not for --help

    warnings_in_one_line()
    o = options_from_args(args)
    return open_image(
        args.ref,
        platform=args.platform,
        cache_dir=args.cache_dir,
        plain_http=o.plain_http,
        insecure=o.insecure,
        user=o.user,
        docker_config=o.docker_config,
        registry_config=o.registry_config,
    )


def print_stats(img: ImageFS) -> None:
    st = img.stats()
    pct = 100 * st.bytes_fetched / max(st.image_bytes, 1)
    print(
        f"fetched {st.bytes_fetched} of {st.image_bytes} bytes ({pct:.2f}%),"
        f" {st.layers_opened}/{st.layers} layers opened",
        file=sys.stderr,
    )


def stdout_may_close(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``lazypull cat ... | head``: a reader that stops early ends the command quietly."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
            return 0

    return wrapped
