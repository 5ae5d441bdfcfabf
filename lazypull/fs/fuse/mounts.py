"""One mount instance, told apart from any other mount at the same path.

A layer's mountpoint is a fixed path, and over a node's life many mounts come and go
there. Anything that unmounts "what is at the path" can hit a newer mount than the one it
meant to. So a mount is held as an ``O_PATH`` descriptor of its root: the kernel's mount
id of that descriptor names the instance, whatever the path shows later, and opening the
path again tells whether the path still shows it. None of this sends a FUSE request (a
path walk to a mount's root and an ``O_PATH`` open never ask the filesystem), so a
wedged layer cannot hang these checks.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from dataclasses import dataclass

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


def mnt_id_of(fd: int) -> int:
    """The kernel's id of the mount *fd* lives on (``/proc/self/fdinfo``)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    raise OSError(errno.EINVAL, f"no mnt_id for fd {fd}")


def mount_table() -> dict[int, tuple[str, str, str]]:
    """mount id -> (device "major:minor", mount point, filesystem type) from mountinfo."""
    out: dict[int, tuple[str, str, str]] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            try:
                sep = parts.index("-")
                out[int(parts[0])] = (parts[2], parts[4].replace("\\040", " "), parts[sep + 1])
            except (ValueError, IndexError):
                continue
    return out


def _resolved(path: str) -> str:
    """*path* with its parent's links resolved, not its own: stat of a mount's root would be
    a request to its server (one that may not have answered INIT yet, or never will)."""
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(head), tail)


@dataclass
class MountRef:
    """A mount instance: its root held open (``O_PATH``), its id and its device.

    The device (``major:minor`` of its superblock) is what a FUSE connection is known by in
    every mount namespace and across process restarts; the id is this namespace's name."""

    path: str
    fd: int
    mnt_id: int
    dev: str
    fstype: str

    @classmethod
    def open(cls, path: str, expect_dev: str | None = None) -> MountRef:
        """The mount *path* shows now (with *expect_dev*: only if it is that connection)."""
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            mid = mnt_id_of(fd)
            dev, mp, fstype = mount_table().get(mid, ("", "", ""))
            if _resolved(path) != mp:
                raise OSError(errno.ENOENT, f"nothing is mounted at {path}")
            if expect_dev is not None and dev != expect_dev:
                raise OSError(errno.ESTALE, f"{path} shows another mount ({dev}, not {expect_dev})")
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, mid, dev, fstype)

    def shown(self) -> bool:
        """Whether the path still shows this very mount (not the directory below it, not a
        later mount): what overlayfs would take as the lower layer right now."""
        if self.fd < 0:
            return False
        try:
            fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return mnt_id_of(fd) == self.mnt_id
        except OSError:
            return False
        finally:
            os.close(fd)

    def unmount(self) -> bool:
        """Detach this mount if the path still shows it; never another one. Returns whether
        it was detached here (False: already gone, or the path shows something else)."""
        if not self.shown():
            return False
        # Through the held root: the kernel resolves it to this mount (nothing is mounted on
        # its root, or the path would show that instead).
        rc = _libc.umount2(f"/proc/self/fd/{self.fd}".encode(), MNT_DETACH)
        if rc != 0:
            e = ctypes.get_errno()
            if e in (errno.EINVAL, errno.ENOENT):
                return False
            raise OSError(e, f"unmounting {self.path} failed: {os.strerror(e)}")
        return True

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
