"""Build corpus images with tools no one here wrote: buildah, skopeo, ctr, debootstrap.

Everything is local: a busybox-static rootfs is the base image (FROM scratch), debootstrap's
minbase tree is cached under /var/cache/lazypull/ (keyed by a version string, built once
from the Debian mirror), and images go to the test's own registry. buildah runs with the
vfs driver and a private root, runroot and chroot isolation, so tests never collide.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.images import BUSYBOX

CACHE = Path(os.environ.get("LAZYPULL_CORPUS_CACHE", "/var/cache/lazypull"))
DEBOOTSTRAP_KEY = "corpus-debootstrap-bookworm-minbase-v1"
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def run(*cmd: str, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res.stdout


def busybox_rootfs(dest: Path) -> Path:
    """A minimal runnable root: busybox-static, its applets as symlinks, passwd and group."""
    for d in ("bin", "etc", "tmp", "root", "home", "var/empty"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, dest / "bin/busybox")
    for applet in run(BUSYBOX, "--list").split():
        if applet != "busybox" and not (dest / "bin" / applet).exists():
            os.symlink("busybox", dest / "bin" / applet)
    (dest / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
    (dest / "etc/group").write_text("root:x:0:\napp:x:1000:\n")
    return dest


def debootstrap(root: Path, tries: int = 2) -> None:
    """Debian's minbase into *root*; a mirror's bad moment is tried again, and a failure
    shows debootstrap's own log (its output stops at the step that failed, without the why)."""
    for attempt in range(1, tries + 1):
        try:
            run("debootstrap", "--variant=minbase", "bookworm", str(root), DEBIAN_MIRROR, timeout=1800)
            return
        except RuntimeError as e:
            log = root / "debootstrap" / "debootstrap.log"
            why = log.read_text(errors="replace")[-3000:] if log.exists() else "(no debootstrap.log)"
            shutil.rmtree(root, ignore_errors=True)
            if attempt == tries:
                raise RuntimeError(f"{e}\ndebootstrap.log:\n{why}") from None


def debootstrap_tar() -> Path:
    """Debian's minbase tree as a tar, built once per machine and cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"{DEBOOTSTRAP_KEY}.tar"
    with open(CACHE / f"{DEBOOTSTRAP_KEY}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return out
        with tempfile.TemporaryDirectory(prefix="lazypull-debootstrap-") as tmp:
            root = Path(tmp) / "root"
            debootstrap(root)
            shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
            (root / "var/cache/apt/archives/partial").mkdir(parents=True)
            part = out.with_suffix(".tmp")
            run("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(root), "-cf", str(part), ".")
            part.rename(out)
    return out


@dataclass
class Buildah:
    """buildah with a private store (vfs) under *root*."""

    root: Path

    def __call__(self, *args: str, cwd: Path | None = None, timeout: float = 600) -> str:
        base = ["buildah", "--storage-driver", "vfs", "--root", str(self.root / "root")]
        base += ["--runroot", str(self.root / "runroot")]
        env = dict(os.environ, BUILDAH_ISOLATION="chroot", TMPDIR=str(self.root / "tmp"))
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        return run(*base, *args, cwd=cwd, timeout=timeout, env=env)

    def base_image(self, name: str, rootfs: Path) -> str:
        """A FROM-scratch image holding *rootfs*, committed under *name*."""
        ctr = self("from", "scratch").strip()
        self("copy", ctr, f"{rootfs}/.", "/")
        self("config", "--cmd", "/bin/sh", "--env", "PATH=/bin", ctr)
        self("commit", "--rm", ctr, name)
        return name
