"""One node-wide budget for the memory layers take while their indexes are parsed and built.

A served layer costs little (its compact index is a mapped file), but opening one costs
about a kilobyte per TOC entry until its compact index is written: a crafted image of 24
layers with 250,000 entries each (19 MB of blobs) would take the layer server past 4 GB.
Each open therefore claims its estimate here before its entries are decoded (the format
readers call :meth:`Claim.admit` with the TOC's size and a bound on its entries), and
gives it back once the compact index serves. A claim that does not fit waits for others to
end; waiting claims are granted in the order they came (:meth:`IndexMemory._may_take`). One
that can never fit (over the per-image limit) is refused at once with one line that names
the layer, the estimate and the setting. A refused or timed-out mount fails and
the daemon pulls that layer in full: nothing is lost, nothing else waits.

The per-image limit keeps one image from holding the whole budget while other images'
layers wait. Freed memory goes back to the system (:func:`lazypull.heap.give_back`) when a build ends and
when a layer is unmounted: glibc keeps a freed heap otherwise, and the next image would find
the server as large as the largest it ever opened.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from lazypull.errors import LazypullError
from lazypull.heap import give_back

log = logging.getLogger(__name__)

# What opening a layer holds at its peak per TOC entry (decoded entries, the parsed tree and
# the compact index being written): measured at 0.9-1.0 KB for crafted entries of empty files
# (bench/bench_crafted_memory.py), up to 1.3 KB with long names and digests
# (bench/bench_toc_memory.py). The TOC's text is counted on top.
PEAK_BYTES_PER_ENTRY = 1300
MIN_BUDGET = 1 << 30  # half of it (one image's share) fits the largest TOC the format limits admit
MAX_DEFAULT_BUDGET = 4 << 30
WAIT_SEC = 120.0  # a claim waits this long for others to end, then the mount fails


class IndexMemoryError(LazypullError):
    """A layer's index would not fit the layer server's index memory (it is pulled in full)."""


def default_budget() -> int:
    """An eighth of the node's memory, between 1 and 4 GB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 << 30
    return max(MIN_BUDGET, min(total // 8, MAX_DEFAULT_BUDGET))


def estimate(toc_bytes: int, entries: int) -> int:
    return toc_bytes + entries * PEAK_BYTES_PER_ENTRY


@dataclass
class _Held:
    image: str
    nbytes: int


@dataclass(eq=False)  # (compared by identity: two claims of one size are two places in the queue)
class _Waiting:
    image: str
    nbytes: int


class IndexMemory:
    """The budget: *total* bytes for all layers being opened, *per_image* for one image's."""

    def __init__(self, total: int = 0, per_image: int = 0, wait_sec: float = WAIT_SEC) -> None:
        self.total = total or default_budget()
        self.per_image = min(per_image or self.total // 2, self.total)
        self.wait_sec = wait_sec
        self._cond = threading.Condition()
        self._held: dict[int, _Held] = {}
        self._by_image: dict[str, int] = {}
        self._queue: list[_Waiting] = []  # claims waiting, in the order they came
        self.in_use = 0
        self.peak = 0
        self.waiting = 0
        self.refused = 0

    def claim(self, image: str, layer: str) -> Claim:
        """A claim for one layer's open; nothing is held until :meth:`Claim.admit`."""
        return Claim(self, image, layer)

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "budget": self.total,
                "per_image": self.per_image,
                "in_use": self.in_use,
                "peak": self.peak,
                "opening": len(self._held),
                "waiting": self.waiting,
                "refused": self.refused,
            }

    def _take(self, c: Claim, nbytes: int) -> None:
        what = f"layer {c.layer[:19]} of {c.image or 'a local blob'}"
        need = (
            f"its index needs about {nbytes >> 20} MB to build "
            f"(up to {c.entries} entries, {c.toc_bytes >> 20} MB of TOC)"
        )
        if nbytes > self.per_image:
            with self._cond:
                self.refused += 1
            raise IndexMemoryError(
                f"{what}: {need}, over the per-image index memory of {self.per_image >> 20} MB "
                "(cache.image_index_memory_bytes); it is pulled in full"
            )
        deadline = time.monotonic() + self.wait_sec
        with self._cond:
            ticket = _Waiting(c.image, nbytes)
            self._queue.append(ticket)
            self.waiting += 1
            try:
                while not self._may_take(ticket):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.refused += 1
                        raise IndexMemoryError(
                            f"{what}: {need}; waited {self.wait_sec:.0f}s while {self.in_use >> 20} of "
                            f"{self.total >> 20} MB of index memory (cache.index_memory_bytes) stayed claimed by "
                            f"{len(self._held)} other layers; it is pulled in full"
                        )
                    self._cond.wait(left)
            finally:
                self.waiting -= 1
                self._queue.remove(ticket)
                if self._queue:
                    self._cond.notify_all()  # the next in line may go now (or no longer waits behind us)
            self._held[id(c)] = _Held(c.image, nbytes)
            self._by_image[c.image] = self._by_image.get(c.image, 0) + nbytes
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)

    def _may_take(self, ticket: _Waiting) -> bool:
        """Whether *ticket* fits now and its turn has come (lock held). Claims are granted in
        the order they came: one that fits waits behind every earlier claim of its image, and
        behind earlier claims of other images that wait for the node's budget (a large claim
        is not passed by smaller ones for ever). An earlier claim that waits for its own
        image (its share, or an earlier claim of its image) holds up no other image's."""
        if not self._fits(ticket.image, ticket.nbytes):
            return False
        images: set[str] = set()  # images with an earlier claim waiting
        for w in self._queue:
            if w is ticket:
                return True
            if w.image == ticket.image:
                return False
            if w.image not in images and self._image_fits(w.image, w.nbytes):
                return False  # it waits for the node's budget: its turn is before ours
            images.add(w.image)
        return True

    def _fits(self, image: str, nbytes: int) -> bool:
        return self.in_use + nbytes <= self.total and self._image_fits(image, nbytes)

    def _image_fits(self, image: str, nbytes: int) -> bool:
        return self._by_image.get(image, 0) + nbytes <= self.per_image

    def _release(self, c: Claim) -> bool:
        with self._cond:
            h = self._held.pop(id(c), None)
            if h is None:
                return False
            self.in_use -= h.nbytes
            left = self._by_image[h.image] - h.nbytes
            if left:
                self._by_image[h.image] = left
            else:
                del self._by_image[h.image]
            self._cond.notify_all()
            return True


class Claim:
    """One layer's share of :class:`IndexMemory`, from its TOC's decode to its compact index."""

    def __init__(self, budget: IndexMemory, image: str, layer: str) -> None:
        self.budget, self.image, self.layer = budget, image, layer
        self.toc_bytes = self.entries = 0
        self.held = False

    def admit(self, toc_bytes: int, entries: int) -> None:
        """Wait until the layer's estimate fits (the format readers call this before decoding);
        raises :class:`IndexMemoryError` if it never can or did not in time."""
        if self.held:  # (a layer opened again after a failed try keeps its first claim)
            return
        self.toc_bytes, self.entries = toc_bytes, entries
        self.budget._take(self, estimate(toc_bytes, entries))
        self.held = True

    def release(self) -> None:
        """The index serves from its compact form (or the open failed): the memory goes back."""
        self.held = False
        if self.budget._release(self):
            give_back()
