"""A layer's overlay view answered from its parsed index while the compact one is built.

Building a large layer's compact index takes a good part of a second (30k entries: about
0.2 s in this interpreter); starting a container needs a handful of its directories. This
tree answers those at once, with the inode numbers, attributes and directory entries the
compact index will give: both number nodes by index order and take each directory's view
from :mod:`lazypull.format.overlayview`, so the kernel sees no change when the compact
index takes over. Views are made a directory at a time, when first asked for.
"""

from __future__ import annotations

import threading

from lazypull.format.compactindex import IMPLICIT, NONE, TYPE_CODE, Node
from lazypull.format.index import Entry, EntryType, LayerIndex
from lazypull.format.overlayview import DirView, add_hardlinks, ino_of, node_flags, node_of, view_dir

_DIR, _SYMLINK = EntryType.DIR, EntryType.SYMLINK


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


class ParsedTree:
    """The tree interface of :class:`~lazypull.format.compactindex.CompactIndex` that
    :class:`~lazypull.fs.layer.LayerFS` uses, over a parsed index. A :class:`Node` made
    here carries its own node number in ``name_off`` (there is no string pool)."""

    def __init__(self, index: LayerIndex) -> None:
        self.index = index
        self._entries = list(index.entries())
        self._ids = {e.name: i for i, e in enumerate(self._entries)}
        self.fs_inodes = len(self._entries)
        self._views: dict[int, DirView] = {}  # the directory's own entries (no hardlinks yet)
        self._linked: set[int] = set()  # directories whose hardlinks are added
        self._lock = threading.RLock()

    # -- views ------------------------------------------------------------------------------
    def _parent(self, i: int) -> int:
        return self._ids[self._entries[i].name.rpartition("/")[0]]

    def _base(self, i: int) -> bytes:
        return _enc(self._entries[i].name.rpartition("/")[2])

    def _target(self, h: int) -> int | None:
        return self._ids.get(self._entries[h].link_name)

    def _own_view(self, d: int) -> DirView:
        with self._lock:
            v = self._views.get(d)
            if v is None:
                name = self._entries[d].name
                prefix = name + "/" if name else ""
                ids, entries = self._ids, self._entries
                names = self.index.children(name)
                kids = [ids[prefix + k] for k in names]
                types = [entries[i].type for i in kids]
                v = self._views[d] = view_dir(zip(kids, map(_enc, names), types, strict=True), d == 0)
            return v

    def view(self, d: int) -> DirView:
        """Directory *d*'s view with its hardlinks (their targets' visibility needs only the
        views of the targets' ancestors without theirs: no cycles)."""
        with self._lock:
            v = self._own_view(d)
            if d not in self._linked:
                if v.hardlinks:
                    add_hardlinks(v, self._base, self._target, self.visible)
                self._linked.add(d)
            return v

    def visible(self, i: int) -> bool:
        """Whether node *i* is shown (has an inode): each ancestor's view shows its child."""
        while i != 0:
            p = self._parent(i)
            if i not in self._own_view(p).flags:
                return False
            i = p
        return True

    def _flags(self, i: int) -> int:
        own = self._own_view(i) if self._entries[i].type is _DIR else None
        return node_flags(None if i == 0 else self._own_view(self._parent(i)), i, own)

    # -- the tree interface -----------------------------------------------------------------
    def node_of_inode(self, ino: int) -> int | None:
        i = node_of(ino)
        if not 0 <= i < self.fs_inodes or not self.visible(i):
            return None
        return i

    def node(self, i: int) -> Node:
        e = self._entries[i]
        t = e.type
        sec, ns = divmod(e.mtime_ns, 1_000_000_000)
        b = len(_enc(e.link_name)) if t is _SYMLINK else 0
        nlink_shown = self.view(i).nlink if t is _DIR else 0
        return Node(
            TYPE_CODE[t], self._flags(i) | (IMPLICIT if e.implicit else 0), e.mode,
            NONE if i == 0 else self._parent(i), i, 0, 0, 0, 0, e.uid, e.gid, e.size, sec, ns, e.nlink,
            0 if e.xattrs else NONE, 0 if e.dev_major or e.dev_minor else NONE, 0 if e.digest else NONE,
            0, b, 0, 0, nlink_shown,
        )  # fmt: skip

    def attr_fields(self, i: int) -> tuple[int, ...]:
        return tuple(self.node(i))

    def entry(self, i: int) -> Entry:
        return self._entries[i]

    def dirents(self, nd: Node) -> list[tuple[bytes, int]]:
        return [(name, ino_of(node)) for name, node in self.view(nd.name_off).listing()]

    def find_dirent(self, nd: Node, name: bytes) -> int | None:
        v = self.view(nd.name_off)
        src = v.shown.get(name)
        return None if src is None else ino_of(v.targets.get(src, src))

    def link(self, nd: Node) -> bytes:
        return _enc(self._entries[nd.name_off].link_name)

    def xattrs(self, nd: Node) -> dict[str, bytes]:
        return {k: bytes(v) for k, v in self._entries[nd.name_off].xattrs.items()}

    def dev(self, nd: Node) -> tuple[int, int]:
        e = self._entries[nd.name_off]
        return e.dev_major, e.dev_minor
