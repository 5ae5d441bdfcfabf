"""Pausing Python's cyclic garbage collector while a layer's index is built.

A build makes hundreds of thousands of small objects that hold no cycles; the collector
keeps walking the growing heap (all of a busy server's) and frees nothing: a quarter to a
third of a 30k-entry build's time, measured. Pauses may overlap across threads (several
layers built at once): the collector runs again when the last one ends."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_resume = False


@contextmanager
def collector_paused() -> Iterator[None]:
    global _depth, _resume
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()
