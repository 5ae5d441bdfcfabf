"""Background work giving way to the requests a process serves.

An index build is pure Python: it holds the interpreter lock, and a thread answering a
FUSE request waits for that lock at each of its system calls. While a container starts
(hundreds of requests within a few hundred milliseconds) a build running beside it made
the start 0.09 s slower (small-files, measured; 0.21 s run phase with the build already
done, 0.30 s with it running). A layer being built is served meanwhile from its parsed
index, so its build can wait: it calls a :class:`Pacer` between steps, which sleeps while
requests were answered in the last few milliseconds, up to a bound per build (so a
layer under constant load still gets its compact index, and its memory back)."""

from __future__ import annotations

import time

QUIET_SEC = 0.02  # no request for this long: the build goes on
STEP_SEC = 0.001
MAX_PAUSE_SEC = 2.0

_last_request = 0.0


def request_seen() -> None:
    """Called by the request loop for every request it reads."""
    global _last_request
    _last_request = time.monotonic()


class Pacer:
    """One build's way of giving way (its own pause budget)."""

    def __init__(self, max_pause: float = MAX_PAUSE_SEC) -> None:
        self.max_pause = max_pause
        self.paused = 0.0

    def __call__(self) -> None:
        while self.paused < self.max_pause and time.monotonic() - _last_request < QUIET_SEC:
            time.sleep(STEP_SEC)
            self.paused += STEP_SEC
