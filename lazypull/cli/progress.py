"""Progress display for layer operations: rich bars on a terminal, nothing otherwise."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from lazypull.oci.types import Descriptor

if TYPE_CHECKING:
    from rich.progress import TaskID

#: ``unpack``'s callback: (layers done, layers, files written, bytes written).
UnpackProgressFn = Callable[[int, int, int, int], None]
#: a layer copy's callback: (event, layer, bytes done, bytes).
LayerProgressFn = Callable[[str, Descriptor, int, int], None]


def _speed_column() -> Any:
    """Transfer speed that a finished row keeps: its average over the row's life (rich shows
    ``?`` for a layer sent in one piece, with a single sample to measure)."""
    from rich.filesize import decimal
    from rich.progress import TransferSpeedColumn
    from rich.text import Text

    class AverageSpeedColumn(TransferSpeedColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            if speed is None and task.finished and task.elapsed:
                speed = task.completed / task.elapsed
            if speed is None:
                return Text("")
            return Text(f"{decimal(int(speed))}/s", style="progress.data.speed")

    return AverageSpeedColumn()


@contextmanager
def layer_progress(enabled: bool | None = None) -> Iterator[LayerProgressFn | None]:
    """Yields a callback ``(event, desc, done, total)`` or None when not on a TTY."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    lock = threading.Lock()
    tasks: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), _speed_column(), transient=False
    ) as prog:

        def update(event: str, desc: Descriptor, done: int, total: int) -> None:
            with lock:
                key = desc.digest
                if key not in tasks:
                    tasks[key] = prog.add_task(f"{event} {desc.digest[7:19]}", total=total)
                prog.update(tasks[key], completed=done, description=f"{event:8} {desc.digest[7:19]}")

        yield update


@contextmanager
def unpack_progress(enabled: bool | None = None) -> Iterator[UnpackProgressFn | None]:
    """Yields an :data:`UnpackProgressFn` drawing one line (layers, files, bytes) on a TTY,
    or None: an unpack's size is only known once its layers are decompressed."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield None
        return
    from rich.filesize import decimal
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("unpack"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("layers, {task.fields[files]} files, {task.fields[size]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as prog:
        task = prog.add_task("unpack", total=None, files=0, size="0 bytes")

        def update(layers_done: int, layers: int, files: int, nbytes: int) -> None:
            prog.update(task, completed=layers_done, total=layers, files=files, size=decimal(nbytes))

        yield update


#: a file fetch's callback: bytes of the part just done.
FileProgressFn = Callable[[int], None]


@contextmanager
def file_progress(name: str, total: int, enabled: bool | None = None) -> Iterator[FileProgressFn | None]:
    """Yields a callback adding bytes done to one bar for *name*, or None when not on a TTY."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    lock = threading.Lock()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), _speed_column(), transient=False
    ) as prog:
        task = prog.add_task(f"fetch {name}", total=total)

        def update(n: int) -> None:
            with lock:
                prog.update(task, advance=n)

        yield update
