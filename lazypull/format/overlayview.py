"""The overlay view of a layer, one directory at a time: what overlayfs expects of a lower layer.

``.wh.NAME`` becomes a whiteout (a 0/0 character device) NAME; ``.wh..wh..opq`` makes its
directory opaque; ``.wh.X`` beside X means X was removed below and recreated here (X wins,
opaque if a directory); the prefetch landmarks at the root are hidden; a hardlink is a
second name of its target's inode.

A directory's view depends only on its own entries (and, for hardlinks, on whether their
targets are shown), so the compact index (every directory, when it is written) and a layer
whose compact index is still being built (a directory when it is first asked for) present
exactly the same thing. Inode numbers are fixed by the index alone: a node's inode is its
place in index order plus one (the root is 1); hidden nodes leave gaps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lazypull.format.compactindex import FS_HIDDEN, FS_OPAQUE, FS_WHITEOUT
from lazypull.format.index import EntryType
from lazypull.format.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from lazypull.format.whiteout import OPAQUE, WHITEOUT_PREFIX

_WH = WHITEOUT_PREFIX.encode()
_OPQ = OPAQUE.encode()
_HIDDEN_AT_ROOT = frozenset({PREFETCH_LANDMARK.encode(), NO_PREFETCH_LANDMARK.encode()})
_DIR, _HARDLINK = EntryType.DIR, EntryType.HARDLINK


def ino_of(node: int) -> int:
    return node + 1


def node_of(ino: int) -> int:
    return ino - 1


@dataclass(slots=True)
class DirView:
    """One directory as shown."""

    shown: dict[bytes, int]  # shown name -> the node it comes from, in readdir order
    flags: dict[int, int]  # child node -> its flags; a child not in it is hidden
    opaque: bool  # the directory holds ``.wh..wh..opq``
    hardlinks: list[int]  # hardlink children, shown once their targets are known to be
    dirs: set[int]  # the children that are directories
    targets: dict[int, int] = field(default_factory=dict)  # shown hardlink -> the node it names
    counted: int = -1  # nlink once counted (a getattr of a large directory must not count again)

    def listing(self) -> list[tuple[bytes, int]]:
        """(shown name, node whose inode it is), in readdir order."""
        targets = self.targets
        return [(name, targets.get(src, src)) for name, src in self.shown.items()]

    @property
    def nlink(self) -> int:
        """The directory's link count as shown: 2 + its shown subdirectories."""
        if self.counted < 0:
            dirs = self.dirs
            self.counted = 2 + sum(1 for src in self.shown.values() if src in dirs)
        return self.counted


def view_dir(children: Iterable[tuple[int, bytes, EntryType]], at_root: bool) -> DirView:
    """The view of a directory from its children (node, base name, type) in index order.
    Hardlinks are left for :func:`add_hardlinks` (their targets may lie anywhere)."""
    shown: dict[bytes, int] = {}
    flags: dict[int, int] = {}
    hardlinks: list[int] = []
    dirs: set[int] = set()
    opaque = False
    for node, name, t in children:
        if at_root and name in _HIDDEN_AT_ROOT:
            continue
        if name == _OPQ:
            opaque = True
            continue
        if t is _HARDLINK:
            hardlinks.append(node)
            continue
        whiteout = name.startswith(_WH)
        if whiteout:
            name = name[len(_WH) :]
        other = shown.get(name)
        if other is not None and whiteout:  # X, then .wh.X: X stays, opaque if a directory
            if other in dirs:
                flags[other] |= FS_OPAQUE
            continue
        f = FS_WHITEOUT if whiteout else 0
        if t is _DIR:
            dirs.add(node)
            if other is not None and flags[other] & FS_WHITEOUT:  # .wh.X, then directory X
                f |= FS_OPAQUE
        flags[node] = f
        shown[name] = node
    return DirView(shown, flags, opaque, hardlinks, dirs)


def add_hardlinks(
    view: DirView, base: Callable[[int], bytes], target: Callable[[int], int | None], visible: Callable[[int], bool]
) -> None:
    """Show the directory's hardlinks whose targets are shown (under the hardlink's name)."""
    for h in view.hardlinks:
        t = target(h)
        if t is not None and visible(t):
            view.shown[base(h)] = h
            view.targets[h] = t
            view.counted = -1  # the name may have been a directory's


def node_flags(view_of_parent: DirView | None, node: int, own: DirView | None) -> int:
    """A node's flags: those its parent's view gives it (hidden if none), and opaque when it
    is a directory holding ``.wh..wh..opq``."""
    f = 0 if view_of_parent is None else view_of_parent.flags.get(node, FS_HIDDEN)
    if own is not None and own.opaque and not f & FS_HIDDEN:
        f |= FS_OPAQUE
    return f
