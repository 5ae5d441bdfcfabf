"""Helpers for tests that move images between lazypull and a real containerd."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

from tests.support.containerd import Containerd


def import_layout(cd: Containerd, layout: Path, name: str) -> None:
    """Import an OCI layout dir into containerd as *name* (tagged from its ref.name)."""
    tar = layout.with_suffix(".import.tar")
    subprocess.run(["tar", "-C", str(layout), "-cf", str(tar), "."], check=True)
    cd.ctr("images", "import", "--base-name", name, "--digests", str(tar))
    tar.unlink()


def export_layout(cd: Containerd, ref: str, dest: Path) -> None:
    tar = dest.with_suffix(".export.tar")
    cd.ctr("images", "export", "--skip-manifest-json", str(tar), ref)
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(dest), "-xf", str(tar)], check=True)
    tar.unlink()


def snapshot_tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything that must survive a layer round trip, per path."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[tuple[int, int], str] = {}
    for dirpath, dirs, files in os.walk(root):
        for n in sorted(dirs + files):
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            st = p.lstat()
            content: object = None
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(p.read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    content = (content, inodes.setdefault((st.st_dev, st.st_ino), rel))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                content = (os.major(st.st_rdev), os.minor(st.st_rdev))
            try:
                xattrs = {
                    k: os.getxattr(p, k, follow_symlinks=False)
                    for k in os.listxattr(p, follow_symlinks=False)
                    if k.startswith("user.")
                }
            except OSError:
                xattrs = {}
            mtime = 0 if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode) else st.st_mtime_ns
            out[rel] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, content, tuple(sorted(xattrs.items())), mtime)
    return out
