"""The merged view of an image's layers, as overlayfs would show the rootfs.

Upper layers win; ``.wh.NAME`` hides NAME and ``.wh..wh..opq`` hides everything of
its directory in the layers below; a non-directory hides a lower directory of the same
name. Lookups go top-down and stop at the first layer that decides, so lower layers are
only opened when a question reaches them. Symlinks are resolved inside the image: an
absolute target starts at the image root and ``..`` at the root stays at the root.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lazypull.errors import (
    ImageFileNotFoundError,
    ImageNotADirectoryError,
    ImageSymlinkLoopError,
)
from lazypull.format.index import Entry, EntryType
from lazypull.format.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from lazypull.imagefs.layers import LayerView

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
HIDDEN_AT_ROOT = frozenset({PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
MAX_SYMLINKS = 40  # as Linux (ELOOP)
_CACHE_LIMIT = 500_000
_ROOT = Entry("", EntryType.DIR, mode=0o755, implicit=True)


@dataclass(frozen=True, slots=True)
class Node:
    """What a merged path is: its entry (a hardlink's target entry) and the layer holding it."""

    path: str
    entry: Entry
    layer: int  # index in manifest order, 0 = bottom


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def split(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


class MergedView:
    def __init__(self, openers: Sequence[Callable[[], LayerView]], what: str = "image") -> None:
        self._openers = list(openers)
        self._views: list[LayerView | None] = [None] * len(self._openers)
        self._locks = [threading.Lock() for _ in self._openers]
        self._lookups: dict[str, Node | None] = {}
        self._dir_lookups: dict[str, Node | None] = {}
        self.what = what

    # -- layers ------------------------------------------------------------------------------
    def layer(self, i: int) -> LayerView:
        v = self._views[i]
        if v is None:
            with self._locks[i]:
                v = self._views[i]
                if v is None:
                    v = self._views[i] = self._openers[i]()
        return v

    def opened(self) -> list[LayerView]:
        return [v for v in self._views if v is not None]

    def _top_down(self, below: int | None = None) -> list[int]:
        top = len(self._openers) if below is None else below
        return list(range(top - 1, -1, -1))

    # -- overlay semantics -------------------------------------------------------------------
    def _hides(self, v: LayerView, path: str) -> bool:
        """True if layer *v* hides *path* of every layer below it (it has no entry of its own)."""
        parent, _, base = path.rpartition("/")
        if v.get(join(parent, WHITEOUT + base)) is not None:
            return True
        a = parent
        while True:
            if v.get(join(a, OPAQUE)) is not None:
                return True
            if not a:
                return False
            e = v.get(a)
            if e is not None and e.type != EntryType.DIR:
                return True
            ap, _, ab = a.rpartition("/")
            if v.get(join(ap, WHITEOUT + ab)) is not None:
                return True
            a = ap

    def lookup(self, path: str, *, metadata: bool = True) -> Node | None:
        """The merged entry at normalised *path*, not following symlinks.

        Without *metadata* a directory only needs to be known as one: a layer that has
        it only implicitly (as a parent of its files) answers, and lower layers stay closed.
        """
        cache = self._lookups if metadata else self._dir_lookups
        try:
            return cache[path]
        except KeyError:
            pass
        node = self._lookup(path, metadata)
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        cache[path] = node
        return node

    def _lookup(self, path: str, metadata: bool) -> Node | None:
        if not path:
            if metadata:
                for i in self._top_down():
                    e = self.layer(i).get("")
                    if e is not None and not e.implicit:
                        return Node("", e, i)
            return Node("", _ROOT, len(self._openers) - 1)
        parts = path.split("/")
        if any(p.startswith(WHITEOUT) for p in parts) or (len(parts) == 1 and parts[0] in HIDDEN_AT_ROOT):
            return None
        implicit: Node | None = None  # a parent directory a layer has no entry of its own for
        for i in self._top_down():
            v = self.layer(i)
            e = v.get(path)
            if e is not None:
                if e.type == EntryType.HARDLINK:
                    target = v.get(e.link_name)
                    if target is None or target.type == EntryType.HARDLINK:
                        return implicit
                    e = target
                if e.type == EntryType.DIR and e.implicit and metadata:
                    # Applying such a layer keeps the directory that is already there.
                    implicit = implicit or Node(path, e, i)
                elif implicit is None or e.type == EntryType.DIR:
                    return Node(path, e, i)
                else:
                    return implicit
            if self._hides(v, path):
                return implicit
        return implicit

    def children(self, path: str) -> list[str]:
        """Names in merged directory *path* (normalised, a directory)."""
        names: dict[str, None] = {}
        hidden: set[str] = set()
        for i in self._top_down():
            v = self.layer(i)
            e = v.get(path)
            if e is None:
                if path and self._hides(v, path):
                    break
                continue
            if e.type != EntryType.DIR:
                break
            own = v.children(path)
            whiteouts = set()
            for n in own:
                if n == OPAQUE:
                    continue
                if n.startswith(WHITEOUT):
                    whiteouts.add(n[len(WHITEOUT) :])
                elif not (not path and n in HIDDEN_AT_ROOT) and n not in hidden:
                    names.setdefault(n, None)
            hidden |= whiteouts
            if OPAQUE in own or (path and self._hides(v, path)):
                break
        return list(names)

    # -- paths -------------------------------------------------------------------------------
    def resolve(self, path: str, *, follow: bool = True) -> Node:
        """The node *path* names, symlinks in it resolved inside the image (the last one only
        when *follow*). Raises the ``lazypull.errors`` path errors."""
        pending = split(path)
        pending.reverse()  # a stack: the next component is last
        done: list[str] = []
        hops = 0
        node = self.lookup("", metadata=not pending)
        assert node is not None
        while pending:
            comp = pending.pop()
            if node.entry.type != EntryType.DIR:
                raise ImageNotADirectoryError(f"{self.what}: /{'/'.join(done)}: not a directory")
            if comp == "..":
                if done:
                    done.pop()
                node = self.lookup("/".join(done), metadata=not pending)
                assert node is not None
                continue
            cand = join("/".join(done), comp)
            nxt = self.lookup(cand, metadata=not pending)
            if nxt is None:
                raise ImageFileNotFoundError(f"{self.what}: /{cand}: no such file or directory")
            if nxt.entry.type == EntryType.SYMLINK and (pending or follow):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise ImageSymlinkLoopError(f"{self.what}: /{path.strip('/')}: too many levels of symbolic links")
                target = nxt.entry.link_name
                if target.startswith("/"):
                    done = []
                    node = self.lookup("", metadata=False)
                    assert node is not None
                pending.extend(reversed(split(target)))
                continue
            done.append(comp)
            node = nxt
        if not node.path:  # reached through an absolute symlink to "/": the root's own metadata
            node = self.lookup("")
            assert node is not None
        return node

    def close(self) -> None:
        for v in self.opened():
            v.close()
