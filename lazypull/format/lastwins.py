"""Which entries of a layer tar survive extraction, when a name appears more than once.

A tar may list a name twice (legal, and common in layers other tools write: ``tmp/``
0755 then ``tmp/`` 01777). Extraction, and therefore Docker and containerd's applier,
gives the *last* entry the name: a later directory over a directory updates its
metadata and keeps its children; anything else replaces the earlier entry, and a
non-directory replacing a directory takes the whole subtree with it. Hardlinks made
to a file before it was replaced keep the old content: the first of them becomes the
file, the others link to it.

:class:`LastWins` applies that rule to a stream of items (TOC entry groups for the
writer, tar headers when a layer is reordered) and hands back the survivors in order.
The TOC reader applies the same rule to its own index (``estargz_reader.TOCIndex``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Slot(Generic[T]):
    name: str  # normalised
    kind: str  # "dir", "reg", "hardlink" or any other type name
    link: str  # normalised hardlink target ("" otherwise)
    item: T


class LastWins(Generic[T]):
    """Items of one layer keyed by normalised name, with tar extraction's overwrite rule.

    *merge_dir(earlier, later)* copies a later directory's metadata onto the earlier
    one; *rename(item, name, as_file)* turns a file's item into the named hardlink
    that takes its place (``as_file``) or retargets a hardlink item to *name*.
    """

    def __init__(self, merge_dir: Callable[[T, T], None], rename: Callable[[T, str, bool], None]) -> None:
        self._merge_dir = merge_dir
        self._rename = rename
        self._slots: list[_Slot[T] | None] = []
        self._live: dict[str, int] = {}  # name -> index in _slots
        self._links: dict[str, list[int]] = {}  # hardlink target name -> hardlink slot indices
        self.replaced = 0  # how many entries a later one overwrote (for a log line)

    def add(self, name: str, kind: str, link: str, item: T) -> None:
        old = self._live.get(name)
        if old is not None:
            prev = self._slots[old]
            assert prev is not None
            self.replaced += 1
            if prev.kind == "dir" and kind == "dir":
                self._merge_dir(prev.item, item)
                return
            self._drop(name)
            if prev.kind == "dir":
                prefix = name + "/"
                for n in [n for n in self._live if n.startswith(prefix)]:
                    if n in self._live:
                        self._drop(n)
        self._live[name] = len(self._slots)
        self._slots.append(_Slot(name, kind, link, item))
        if kind == "hardlink":
            self._links.setdefault(link, []).append(len(self._slots) - 1)

    def items(self) -> list[T]:
        return [s.item for s in self._slots if s is not None]

    def dangling_links(self) -> set[str]:
        """Targets of surviving hardlinks that name nothing in the layer (files of a lower layer)."""
        return {
            t for t, idx in self._links.items() if t not in self._live and any(self._slots[i] is not None for i in idx)
        }

    def _drop(self, name: str) -> None:
        idx = self._live.pop(name)
        slot = self._slots[idx]
        assert slot is not None
        self._slots[idx] = None
        if slot.kind == "hardlink":
            siblings = self._links.get(slot.link)
            if siblings and idx in siblings:
                siblings.remove(idx)
        links = [i for i in self._links.pop(name, []) if self._slots[i] is not None]
        if not links:
            return
        if slot.kind == "hardlink":  # links to a replaced hardlink keep its file
            for i in links:
                self._retarget(i, slot.link)
            return
        if slot.kind != "reg":
            return
        # The first hardlink to the replaced file becomes that file; the rest link to it.
        first = self._slots[links[0]]
        assert first is not None
        self._rename(slot.item, first.name, True)
        self._slots[links[0]] = _Slot(first.name, "reg", "", slot.item)
        for i in links[1:]:
            self._retarget(i, first.name)

    def _retarget(self, i: int, target: str) -> None:
        """Point hardlink slot *i* (already taken off its old target's list) at *target*."""
        s = self._slots[i]
        assert s is not None
        s.link = target
        self._rename(s.item, target, False)
        self._links.setdefault(target, []).append(i)
