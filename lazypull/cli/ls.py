"""``lazypull ls``: list a directory inside an image without pulling it."""

from __future__ import annotations

import argparse
import stat
import time
from typing import TYPE_CHECKING

from lazypull.cli.imageargs import add_image_args, open_from_args, print_stats, stdout_may_close

if TYPE_CHECKING:
    from lazypull.imagefs import FileInfo


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ls", help="list a directory inside an image", description=__doc__)
    p.add_argument("-l", "--long", action="store_true", help="mode, owner, size, mtime, symlink targets")
    p.add_argument("-R", "--recursive", action="store_true", help="every path below PATH")
    add_image_args(p)
    p.add_argument("path", nargs="?", default="/", help="a directory or file in the image (default: /)")
    p.set_defaults(func=run)


def _line(info: FileInfo, shown: str, long: bool) -> str:
    if not long:
        return shown
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(info.mtime))
    target = f" -> {info.link_target}" if info.is_symlink else ""
    return f"{stat.filemode(info.mode)} {info.uid:>5} {info.gid:>5} {info.size:>12} {when} {shown}{target}"


@stdout_may_close
def run(args: argparse.Namespace) -> int:
    with open_from_args(args) as img:
        top = img.stat(args.path, follow_symlinks=False)
        if top.is_symlink and not args.long:
            top = img.stat(args.path)
        if not top.is_dir:
            print(_line(top, args.path, args.long))
        elif args.recursive:
            for dirpath, _dirs, _files in img.walk(args.path):
                for info in img.scandir(dirpath):
                    print(_line(info, f"{dirpath.rstrip('/')}/{info.name}", args.long))
        else:
            for info in img.scandir(args.path):
                print(_line(info, info.name, args.long))
        if args.stats:
            print_stats(img)
    return 0
