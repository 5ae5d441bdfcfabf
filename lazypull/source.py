"""Random-access byte sources: the one abstraction every layer reader works over.

The same reader code runs on a local blob file, bytes in memory, or HTTP Range reads
against a registry (``lazypull.registry`` provides that source).
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from lazypull.errors import FormatError


@runtime_checkable
class ReadAt(Protocol):
    """Positional reads of a blob of known size.

    ``read_at`` returns exactly *length* bytes or raises (short reads past the end are a
    :class:`FormatError`; transport failures raise the transport's error).
    """

    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, length: int) -> bytes: ...


def check_range(src_size: int, offset: int, length: int) -> None:
    if offset < 0 or length < 0 or offset + length > src_size:
        raise FormatError(f"range [{offset}, {offset + length}) is outside the blob (size {src_size})")


class BytesSource:
    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size(self) -> int:
        return len(self._data)

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(len(self._data), offset, length)
        return self._data[offset : offset + length]


class FileSource:
    """A local blob file read with ``pread`` (thread-safe, no shared file position)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._size = os.fstat(self._fd).st_size

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(self._size, offset, length)
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise FormatError(f"short read at {offset}: {len(data)} of {length} bytes")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
