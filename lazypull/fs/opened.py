"""The bytes a layer's open read (footer and TOC), kept on disk so a restarted layer server
re-opens its layers without the registry.

Nothing here is trusted: the replayed bytes go through the same parsing and TOC digest
check as fetched ones, and a read they do not cover goes to the registry.
"""

from __future__ import annotations

import logging
import struct
import threading
from pathlib import Path

from lazypull.format.source import ReadAt
from lazypull.fsutil import atomic_write

log = logging.getLogger(__name__)

_HDR = struct.Struct(">QI")  # offset, length
MAX_SAVED = 256 << 20


class RecordingSource:
    """Passes reads through and remembers them (only used while a layer is opened)."""

    def __init__(self, inner: ReadAt) -> None:
        self.inner = inner
        self.reads: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.inner.size

    def read_at(self, offset: int, length: int) -> bytes:
        data = self.inner.read_at(offset, length)
        with self._lock:
            self.reads.append((offset, data))
        return data

    def save(self, path: Path) -> None:
        blob = b"".join(_HDR.pack(off, len(d)) + d for off, d in self.reads)
        if len(blob) > MAX_SAVED:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(path, blob)
        except OSError as e:
            log.warning("cannot keep the TOC of %s: %s", path.name, e)


class ReplaySource:
    """Serves reads from saved ranges, anything else from *inner*."""

    def __init__(self, inner: ReadAt, path: Path) -> None:
        self.inner = inner
        self.ranges: list[tuple[int, bytes]] = []
        data = path.read_bytes()
        pos = 0
        while pos + _HDR.size <= len(data):
            off, n = _HDR.unpack_from(data, pos)
            pos += _HDR.size
            self.ranges.append((off, data[pos : pos + n]))
            pos += n

    @property
    def size(self) -> int:
        return self.inner.size

    def read_at(self, offset: int, length: int) -> bytes:
        for off, d in self.ranges:
            if off <= offset and offset + length <= off + len(d):
                return d[offset - off : offset - off + length]
        return self.inner.read_at(offset, length)
