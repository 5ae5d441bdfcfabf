"""Progress display for layer operations: rich bars on a terminal, nothing otherwise."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from lazypull.oci.types import Descriptor


@contextmanager
def layer_progress(enabled: bool | None = None) -> Iterator[object]:
    """Yields a callback ``(event, desc, done, total)`` or None when not on a TTY."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    lock = threading.Lock()
    tasks: dict[str, int] = {}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=False
    ) as prog:

        def update(event: str, desc: Descriptor, done: int, total: int) -> None:
            with lock:
                key = desc.digest
                if key not in tasks:
                    tasks[key] = prog.add_task(f"{event} {desc.digest[7:19]}", total=total)
                prog.update(tasks[key], completed=done, description=f"{event:8} {desc.digest[7:19]}")

        yield update
