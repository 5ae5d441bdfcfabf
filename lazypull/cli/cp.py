"""``lazypull cp``: copy a file or (``-r``) a directory out of an image, without pulling it.

Regular files, directories and symlinks are copied with their permission bits and
mtimes (not owners: no root needed). Nothing is written through a symlink that is
already in the destination tree.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lazypull.cli.imageargs import add_image_args, open_from_args, print_stats
from lazypull.cli.progress import file_progress
from lazypull.errors import ImageIsADirectoryError, LazypullError

if TYPE_CHECKING:
    from lazypull.imagefs import FileInfo, ImageFS

PARALLEL_FROM = 64 << 20
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cp", help="copy files out of an image", description=__doc__)
    p.add_argument("-r", "--recursive", action="store_true", help="copy a directory and everything below it")
    add_image_args(p)
    p.add_argument("path", help="a file (or with -r a directory) in the image")
    p.add_argument("dest", type=Path, help="target file or existing directory")
    p.set_defaults(func=run)


def copy_file(img: ImageFS, src: str, dest: Path, info: FileInfo) -> None:
    try:
        fd = os.open(dest, _CREATE, 0o600)
    except OSError as e:
        raise LazypullError(f"cannot write {dest}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as out, img.open(src) as f:
        while data := f.read(1 << 20):
            out.write(data)
        os.fchmod(out.fileno(), info.mode & 0o7777)
    os.utime(dest, (info.mtime, info.mtime), follow_symlinks=False)


def copy_tree(img: ImageFS, src: str, dest: Path) -> int:
    """Copy directory *src* of the image to a new directory *dest*; returns files copied."""
    n = 0
    dest.mkdir(mode=0o700)
    for info in img.scandir(src):
        s, d = f"{src.rstrip('/')}/{info.name}", dest / info.name
        if info.is_dir:
            n += copy_tree(img, s, d)
        elif info.is_symlink:
            os.symlink(info.link_target, d)
            n += 1
        elif info.is_file:
            copy_file(img, s, d, info)
            n += 1
    top = img.stat(src)
    os.chmod(dest, top.mode & 0o7777)
    os.utime(dest, (top.mtime, top.mtime))
    return n


def run(args: argparse.Namespace) -> int:
    with open_from_args(args) as img:
        info = img.stat(args.path)
        name = img.realpath(args.path).rpartition("/")[2] or "rootfs"
        dest: Path = args.dest / name if args.dest.is_dir() and not args.dest.is_symlink() else args.dest
        if info.is_dir:
            if not args.recursive:
                raise ImageIsADirectoryError(f"{img.ref}: {args.path}: is a directory (use -r)")
            if dest.exists():
                raise LazypullError(f"{dest} already exists")
            copy_tree(img, args.path, dest)
        else:
            if info.size >= PARALLEL_FROM:  # a big file (model weights): fetched in parallel ranges first
                with file_progress(info.name, info.size) as progress:
                    img.fetch(args.path, progress=progress)
            copy_file(img, args.path, dest, info)
        if args.stats:
            print_stats(img)
    return 0
