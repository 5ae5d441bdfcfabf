"""One layer as a read-only filesystem: the inode tree from its index, reads via the fetcher.

Presented the way overlayfs expects a lower layer: ``.wh.NAME`` becomes a 0/0
character device named NAME, ``.wh..wh..opq`` marks its directory opaque with the
``trusted.overlay.opaque`` xattr, and the prefetch landmarks are hidden.
"""

from __future__ import annotations

import errno
import stat

from lazypull.format.index import Entry, EntryType, LayerIndex
from lazypull.format.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from lazypull.fs.fetcher import Fetcher, FetchError
from lazypull.fs.fuse.ops import ROOT_INO, Attr

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = b"trusted.overlay.opaque"
_HIDDEN = frozenset({PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})

_TYPE_BITS = {
    EntryType.DIR: stat.S_IFDIR,
    EntryType.REG: stat.S_IFREG,
    EntryType.SYMLINK: stat.S_IFLNK,
    EntryType.CHAR: stat.S_IFCHR,
    EntryType.BLOCK: stat.S_IFBLK,
    EntryType.FIFO: stat.S_IFIFO,
}


class LayerFS:
    def __init__(self, index: LayerIndex, fetcher: Fetcher) -> None:
        self.index = index
        self.fetcher = fetcher
        self._entries: list[Entry | None] = [None, None]  # ino -> entry (ino 0 unused, 1 root)
        self._attrs: list[Attr | None] = [None, None]
        self._children: dict[int, dict[bytes, int]] = {}
        self._whiteout: set[int] = set()  # inos presented as whiteout devices
        self._opaque: set[int] = set()
        self.bytes_served = 0
        self.accessed: dict[str, None] | None = None  # ordered set of files read, when recording
        self._build()

    def _build(self) -> None:
        by_name: dict[str, int] = {}
        hardlinks: list[tuple[int, Entry]] = []
        for e in self.index.entries():
            if e.name == "":
                ino = ROOT_INO
                self._entries[ino] = e
                self._children[ino] = {}
                by_name[""] = ino
                continue
            parent_name, _, base = e.name.rpartition("/")
            parent = by_name.get(parent_name)
            if parent is None or (base in _HIDDEN and parent == ROOT_INO):
                continue
            if base == OPAQUE:
                self._opaque.add(parent)
                continue
            if e.type == EntryType.HARDLINK:
                hardlinks.append((parent, e))
                continue
            name = base.encode("utf-8", "surrogateescape")
            if base.startswith(WHITEOUT):
                name = base[len(WHITEOUT) :].encode("utf-8", "surrogateescape")
            # ".wh.X" beside X: X removed from below and recreated here; X wins, opaque if a dir.
            other = self._children[parent].get(name)
            if other is not None and base.startswith(WHITEOUT):
                if other in self._children:
                    self._opaque.add(other)
                continue
            if other in self._whiteout and e.type == EntryType.DIR:
                self._opaque.add(len(self._entries))
            ino = len(self._entries)
            self._entries.append(e)
            self._attrs.append(None)
            if base.startswith(WHITEOUT):
                self._whiteout.add(ino)
            by_name[e.name] = ino
            self._children[parent][name] = ino
            if e.type == EntryType.DIR:
                self._children[ino] = {}
        for parent, e in hardlinks:
            target = by_name.get(e.link_name)
            if target is not None:
                self._children[parent][e.name.rpartition("/")[2].encode("utf-8", "surrogateescape")] = target

    # -- ReadOnlyFS ---------------------------------------------------------------------
    def _entry(self, ino: int) -> Entry:
        if ino <= 0 or ino >= len(self._entries) or self._entries[ino] is None:
            raise FileNotFoundError(errno.ENOENT, "no such inode")
        return self._entries[ino]  # type: ignore[return-value]

    def getattr(self, ino: int) -> Attr:
        a = self._attrs[ino] if 0 < ino < len(self._attrs) else None
        if a is not None:
            return a
        e = self._entry(ino)
        if ino in self._whiteout:
            a = Attr(ino, stat.S_IFCHR, 1, e.uid, e.gid, 0, 0, e.mtime_ns)
        else:
            nlink = e.nlink
            if e.type == EntryType.DIR:
                nlink = 2 + sum(
                    1
                    for i in self._children.get(ino, {}).values()
                    if self._entries[i] is not None and self._entries[i].type == EntryType.DIR
                )  # type: ignore[union-attr]
            size = (
                e.size if e.type == EntryType.REG else len(e.link_name.encode()) if e.type == EntryType.SYMLINK else 0
            )
            rdev = (
                (e.dev_major << 8 | (e.dev_minor & 0xFF) | ((e.dev_minor & ~0xFF) << 12))
                if e.type in (EntryType.CHAR, EntryType.BLOCK)
                else 0
            )
            perm = 0o777 if e.type == EntryType.SYMLINK else e.mode & 0o7777  # as Linux shows symlinks
            a = Attr(ino, _TYPE_BITS[e.type] | perm, nlink, e.uid, e.gid, rdev, size, e.mtime_ns)
        self._attrs[ino] = a
        return a

    def lookup(self, parent: int, name: bytes) -> Attr:
        kids = self._children.get(parent)
        if kids is None:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        ino = kids.get(name)
        if ino is None:
            raise FileNotFoundError(errno.ENOENT, "no such file")
        return self.getattr(ino)

    def readdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        kids = self._children.get(ino)
        if kids is None:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        return [(name, self.getattr(child)) for name, child in kids.items()]

    def readlink(self, ino: int) -> bytes:
        e = self._entry(ino)
        if e.type != EntryType.SYMLINK:
            raise OSError(errno.EINVAL, "not a symlink")
        return e.link_name.encode("utf-8", "surrogateescape")

    def read(self, ino: int, offset: int, size: int) -> bytes:
        e = self._entry(ino)
        if e.type != EntryType.REG or ino in self._whiteout:
            raise (
                IsADirectoryError(errno.EISDIR, "not a regular file")
                if e.type == EntryType.DIR
                else OSError(errno.EINVAL, "not a regular file")
            )
        try:
            data = self.fetcher.read(e, offset, size)
            self.bytes_served += len(data)
            if self.accessed is not None and e.name not in self.accessed:
                self.accessed[e.name] = None
            return data
        except FetchError as err:
            raise OSError(errno.EIO, str(err)) from None

    def listxattr(self, ino: int) -> list[bytes]:
        e = self._entry(ino)
        names = [k.encode() for k in e.xattrs]
        if ino in self._opaque:
            names.append(OPAQUE_XATTR)
        return names

    def getxattr(self, ino: int, name: bytes) -> bytes:
        e = self._entry(ino)
        if name == OPAQUE_XATTR and ino in self._opaque:
            return b"y"
        v = e.xattrs.get(name.decode("utf-8", "surrogateescape"))
        if v is None:
            raise OSError(errno.ENODATA, "no such attribute")
        return v

    def passthrough_fd(self, ino: int) -> int | None:
        """An fd on a cache file holding the whole file, verified through that fd, once every
        chunk is cached. A corrupted file is dropped and assembled again from verified chunks
        (themselves re-fetched if they fail their check)."""
        e = self._entries[ino] if 0 < ino < len(self._entries) else None
        if e is None or e.type != EntryType.REG or ino in self._whiteout or not e.size or not e.digest:
            return None
        cache = self.fetcher.cache
        had = cache.path_of(e.digest) is not None
        fd = cache.open_verified(e.digest)
        if fd is not None:
            return fd
        if had:
            self.fetcher.stats.add(verify_errors=1)
        if not all(cache.contains(c.digest) for c in e.chunks):
            return None
        try:
            if cache.put_parts(e.digest, (self.fetcher.chunk(e, c) for c in e.chunks)) is None:
                return None
        except FetchError:
            return None
        return cache.open_verified(e.digest)

    def statfs(self) -> tuple[int, int]:
        return self.index.blob_size, len(self._entries)

    @property
    def inode_count(self) -> int:
        return len(self._entries) - 1
