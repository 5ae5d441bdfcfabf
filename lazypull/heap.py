"""Keeping the layer server's heap from holding on to memory it freed.

glibc keeps freed memory in the process for reuse. Two ways it kept what a crafted image's
layers had freed (measured with ``bench/bench_crafted_memory.py`` and ``malloc_info``:
after 3 rounds of 5 layers of 250,000 entries, 160 MB free in the heaps and the RSS 3.8x
the baseline):

- **Arenas.** A threaded process gets up to 8 heaps ("arenas") per core, and glibc trims
  those of other threads only at their top: a buffer freed below a live one stays, per
  arena, and ``malloc_trim`` does not touch an arena's free top. Python holds its
  interpreter lock for nearly every allocation, so more than two arenas buy nothing here.
- **Thresholds that move.** glibc raises its mmap threshold to the size of the largest
  mapped buffer freed (up to 32 MB) and its trim threshold to twice that: after one 15 MB
  TOC, every later buffer up to that size comes from (and stays in) an arena. Fixed
  thresholds keep large buffers in mappings of their own, unmapped when freed.

:func:`tune` sets both at the server's start; :func:`give_back` (``malloc_trim``) returns
the free pages inside the heaps after a build and after an unmount.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt(3) parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENAS = 2
# A buffer this large or larger is a mapping of its own (TOCs, chunks, index builds); below
# it (FUSE replies of up to 128 KiB, cached chunks of small files) the heap serves.
MMAP_THRESHOLD = 1 << 20
TRIM_THRESHOLD = 1 << 20  # a heap's free top beyond this goes back at once

_libc: ctypes.CDLL | bool | None = False


def _lib() -> ctypes.CDLL | None:
    global _libc
    if _libc is False:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else None
            if _libc is not None and not hasattr(_libc, "malloc_trim"):
                _libc = None  # not glibc
        except OSError:
            _libc = None
    return _libc if isinstance(_libc, ctypes.CDLL) else None


def tune(arenas: int = ARENAS, mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Few arenas and fixed thresholds (the module says why); call it before threads start.
    False where this is not glibc (nothing is changed)."""
    libc = _lib()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    ok = True
    for param, value in ((M_ARENA_MAX, arenas), (M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim_threshold)):
        ok = bool(libc.mallopt(param, value)) and ok  # 1 on success
    return ok


def give_back() -> None:
    """Return the heap's free pages to the system (glibc's ``malloc_trim``; elsewhere nothing)."""
    libc = _lib()
    if libc is not None:
        libc.malloc_trim(0)
