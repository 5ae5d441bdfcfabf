"""Waiting for another process to reach a state (a socket, a mount, a file), with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

from lazypull.errors import LazypullError


class WaitTimeout(LazypullError, TimeoutError):
    """What was waited for did not happen in time."""


def wait_for(
    pred: Callable[[], object], timeout: float = 20.0, what: str = "condition", interval: float = 0.05
) -> None:
    """Poll *pred* until it is truthy; errors while polling count as "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise WaitTimeout(f"timed out after {timeout}s waiting for {what}")
