"""The format-agnostic index of one layer: what the lazy filesystem speaks.

eStargz, zstd:chunked (and later SOCI zTOCs for unconverted gzip layers) each produce
a :class:`LayerIndex`. The filesystem never parses a TOC itself: it asks the index
for entries and for the chunks covering a byte range, fetches each chunk's compressed
span (``blob_offset``..``blob_end``) however it likes (cache, coalesced Range GETs),
and hands the raw bytes back to :meth:`LayerIndex.decode_chunk`, which decompresses
and verifies. Bytes that leave ``decode_chunk`` are verified bytes.
"""

from __future__ import annotations

import bisect
import enum
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from types import MappingProxyType

import msgspec

from lazypull.source import ReadAt

# Shared by every entry without xattrs (most of them): read-only, so sharing is safe.
NO_XATTRS: Mapping[str, bytes] = MappingProxyType({})


class EntryType(enum.StrEnum):
    DIR = "dir"
    REG = "reg"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


class Chunk(msgspec.Struct, gc=False):
    """One independently decodable piece of a regular file's content."""

    file_offset: int  # offset of the chunk's first byte within the file
    size: int  # uncompressed bytes the chunk contributes to the file
    blob_offset: int  # compressed span in the blob: [blob_offset, blob_end)
    blob_end: int
    digest: str  # digest of the chunk's uncompressed bytes (verified by decode_chunk)
    inner_offset: int = 0  # bytes to skip in the decompressed stream (eStargz innerOffset)


def _file_offset(c: Chunk) -> int:
    return c.file_offset


class Entry(msgspec.Struct, gc=False):
    """A filesystem object in a layer. Paths are normalised: no leading '/' or './'; root is ''."""

    name: str
    type: EntryType
    mode: int = 0  # permission bits incl. setuid/setgid/sticky (no file-type bits)
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    size: int = 0
    mtime_ns: int = 0
    link_name: str = ""  # symlink target, or for HARDLINK the normalised path of the target
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: Mapping[str, bytes] = msgspec.field(default_factory=dict)
    digest: str = ""  # whole-file content digest for REG (may be "" when the format has none)
    chunks: list[Chunk] = msgspec.field(default_factory=list)
    nlink: int = 1
    implicit: bool = False  # a parent directory the layer has no entry for

    def chunks_for(self, offset: int, length: int) -> list[Chunk]:
        """The chunks that overlap [offset, offset+length) of this file."""
        if length <= 0 or offset >= self.size or not self.chunks:
            return []
        i = max(bisect.bisect_right(self.chunks, offset, key=_file_offset) - 1, 0)  # O(log n) per read
        end = offset + length
        out: list[Chunk] = []
        for c in self.chunks[i:]:
            if c.file_offset >= end:
                break
            out.append(c)
        return out


class LayerIndex(ABC):
    """A verified index of one layer blob."""

    #: "estargz", "zstdchunked", "soci", ...
    format: str
    #: Blob offset where the prioritized (prefetch) range ends; 0 when the layer has none.
    prefetch_end: int
    #: Size of the layer blob in bytes.
    blob_size: int

    @abstractmethod
    def lookup(self, path: str) -> Entry | None:
        """The entry at *path* (normalised or not), or None. Hardlinks resolve to themselves."""

    @abstractmethod
    def children(self, path: str) -> list[str]:
        """Base names of the entries directly under directory *path*, in TOC order."""

    @abstractmethod
    def entries(self) -> Iterator[Entry]:
        """Every entry (including implicit parent directories), parents before children."""

    @abstractmethod
    def decode_chunk(self, chunk: Chunk, raw: bytes) -> bytes:
        """Decompress the compressed span of *chunk* and verify it; raise on any mismatch.

        *raw* is exactly ``blob[chunk.blob_offset:chunk.blob_end]``. Returns ``chunk.size``
        bytes or raises :class:`lazypull.errors.DigestMismatchError` /
        :class:`lazypull.errors.FormatError`.
        """

    def chunks_sharing(self, chunk: Chunk) -> list[tuple[Entry, Chunk]]:
        """Other files' chunks decoded from exactly *chunk*'s compressed range (a SOCI span
        holds many files): worth decoding and caching when that range is fetched anyway."""
        return []

    def chunks_by_blob(self) -> Iterator[tuple[Entry, Chunk]]:
        """Every regular file's chunks, ordered by their place in the blob (background fetch)."""
        items = [(e, c) for e in self.entries() if e.type == EntryType.REG for c in e.chunks]
        items.sort(key=lambda ec: (ec[1].blob_offset, ec[1].inner_offset))
        return iter(items)

    def digests(self) -> set[str]:
        """Every content digest the layer names (its chunks', its files'): what it may have cached."""
        out = {c.digest for e in self.entries() for c in e.chunks}
        out |= {e.digest for e in self.entries() if e.digest}
        return out

    def read(self, source: ReadAt, path: str, offset: int, length: int) -> bytes:
        """Read a byte range of a regular file straight from *source*, verified.

        Fetches only the chunks the range needs. The lazy filesystem has its own cached,
        coalescing fetcher; this is for tools (``check``, ``unpack``) and tests.
        """
        entry = self.lookup(path)
        if entry is None:
            raise FileNotFoundError(path)
        if entry.type == EntryType.HARDLINK:
            target = self.lookup(entry.link_name)
            if target is None:
                raise FileNotFoundError(entry.link_name)
            entry = target
        end = min(offset + length, entry.size)
        parts: list[bytes] = []
        for c in entry.chunks_for(offset, end - offset):
            data = self.decode_chunk(c, source.read_at(c.blob_offset, c.blob_end - c.blob_offset))
            lo = max(offset - c.file_offset, 0)
            hi = min(end - c.file_offset, c.size)
            parts.append(data[lo:hi])
        return b"".join(parts)


def normalize(path: str) -> str:
    """Normalise a TOC/tar path: strip './' and '/', collapse '//' (no '..' handling here)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return "/".join(parts)
