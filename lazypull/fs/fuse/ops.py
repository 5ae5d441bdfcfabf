"""The interface between the FUSE server and a read-only filesystem, by inode number."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

ROOT_INO = 1


@dataclass(slots=True)
class Attr:
    ino: int
    mode: int  # including the file-type bits
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    size: int = 0
    mtime_ns: int = 0

    @property
    def blocks(self) -> int:
        return (self.size + 511) // 512


class ReadOnlyFS(Protocol):
    """Raise OSError(errno) (FileNotFoundError for ENOENT) to answer with an error."""

    def lookup(self, parent: int, name: bytes) -> Attr: ...

    def getattr(self, ino: int) -> Attr: ...

    def readdir(self, ino: int) -> list[tuple[bytes, Attr]]: ...

    def readlink(self, ino: int) -> bytes: ...

    def read(self, ino: int, offset: int, size: int) -> bytes: ...

    def listxattr(self, ino: int) -> list[bytes]: ...

    def getxattr(self, ino: int, name: bytes) -> bytes: ...

    def passthrough_fd(self, ino: int) -> int | None:
        """An open fd on a local file holding the file's complete content, verified through
        that fd (for passthrough; the caller closes it)."""
        ...

    def statfs(self) -> tuple[int, int]:
        """(total bytes, number of inodes)."""
        ...
