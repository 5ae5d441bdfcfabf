"""The files read through a layer, in first-read order, with when and which bytes.

Kept only when a mount asks for it (``record_access``): ``optimize`` puts the files first
in the layers it converts, and a prefetch profile names the files and their byte ranges
by the time of first read. Iterating gives the paths, so it reads like the ordered set of
names it extends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

MAX_RANGES = 256  # per file; beyond, the nearest ranges are joined


class AccessLog:
    def __init__(self) -> None:
        self._files: dict[str, tuple[float, list[list[int]]]] = {}  # path -> (wall clock of 1st read, [start, end])

    def note(self, path: str, offset: int, size: int) -> None:
        """One read of *size* bytes at *offset* of the file *path*."""
        got = self._files.get(path)
        if got is None:
            self._files[path] = (time.time(), [[offset, offset + size]])
            return
        spans = got[1]
        last = spans[-1]
        if last[0] <= offset <= last[1]:  # sequential reads grow one range
            last[1] = max(last[1], offset + size)
        elif size:
            spans.append([offset, offset + size])
            if len(spans) > MAX_RANGES:
                spans.sort()
                gaps = [spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1)]
                i = gaps.index(min(gaps))
                spans[i : i + 2] = [[spans[i][0], max(spans[i][1], spans[i + 1][1])]]

    def rows(self) -> list[list[object]]:
        """``[path, first-read wall clock, [[offset, length], ...]]`` per file, in first-read order."""
        return [[p, t, [[s, e - s] for s, e in spans if e > s]] for p, (t, spans) in list(self._files.items())]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._files))

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, path: object) -> bool:
        return path in self._files
