"""Giving a freed heap back to the system.

glibc keeps freed memory in the process for reuse; after a layer server parsed a TOC of
hundreds of thousands of entries and dropped it, its RSS would stay at the peak of the
largest layer it ever opened. ``malloc_trim`` returns the free pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_libc: ctypes.CDLL | bool | None = False


def give_back() -> None:
    """Return the heap's free pages to the system (glibc's ``malloc_trim``; elsewhere nothing)."""
    global _libc
    if _libc is False:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else None
            if _libc is not None and not hasattr(_libc, "malloc_trim"):
                _libc = None
        except OSError:
            _libc = None
    if isinstance(_libc, ctypes.CDLL):
        _libc.malloc_trim(0)
