"""The bytes a layer's open reads (footer and TOC): fetched as one tail of the blob, and kept
on disk so a restarted layer server re-opens its layers without the registry.

Nothing here is trusted: the tail's and the replayed bytes go through the same parsing and
TOC digest check as fetched ones, and a read they do not cover goes to the registry.
"""

from __future__ import annotations

import logging
import struct
import threading
from pathlib import Path

from lazypull.fsutil import atomic_write
from lazypull.source import ReadAt

log = logging.getLogger(__name__)

_HDR = struct.Struct(">QI")  # offset, length
MAX_SAVED = 256 << 20


TAIL_BYTES = 64 << 10


class TailSource:
    """Reads near the end of the blob come from one fetch of its last *tail* bytes.

    Opening a layer reads the format sniff, the footer and the TOC, all at the end of the
    blob: one request instead of three (each a registry round trip on every mount). A read
    that starts before the held tail fetches only the missing part and extends it; reads
    elsewhere pass through. Used only while a layer is opened (it holds the tail)."""

    def __init__(self, inner: ReadAt, tail: int = TAIL_BYTES) -> None:
        self.inner = inner
        self.tail = tail
        self._start = inner.size  # the held bytes are [_start, size)
        self._held = b""
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.inner.size

    def read_at(self, offset: int, length: int) -> bytes:
        size = self.inner.size
        end = offset + length
        if length <= 0 or offset < 0 or end > size or end <= size - max(self.tail, len(self._held)):
            return self.inner.read_at(offset, length)
        with self._lock:
            if not self._held:
                start = min(offset, max(size - self.tail, 0))
                self._held, self._start = self.inner.read_at(start, size - start), start
            elif offset < self._start:
                self._held, self._start = self.inner.read_at(offset, self._start - offset) + self._held, offset
            return self._held[offset - self._start : end - self._start]


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

    def save(self, path: Path) -> bool:
        """Write the reads to *path*; False if they were too large or could not be written."""
        blob = b"".join(_HDR.pack(off, len(d)) + d for off, d in self.reads)
        if len(blob) > MAX_SAVED:
            return False
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(path, blob)
        except OSError as e:
            log.warning("cannot keep the TOC of %s: %s", path.name, e)
            return False
        return True


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
