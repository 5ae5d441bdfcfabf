"""A raw blob (an artifact's file, e.g. model weights) as a layer index of one file, its
chunks the spans of its chunk list (:mod:`lazypull.format.chunklist`): the fetcher then reads
it by range like any lazy layer, and each chunk is checked against its sha256 before any
byte of it is returned or cached. "Decoding" a chunk is that check: the bytes are stored as is.
"""

from __future__ import annotations

from collections.abc import Iterator

from lazypull.errors import FormatError
from lazypull.format.chunklist import BlobChunks
from lazypull.format.index import Chunk, Entry, EntryType, LayerIndex, normalize
from lazypull.oci import digest as digestlib
from lazypull.oci.types import Descriptor

FILE_MODE = 0o644


class OneFileTree:
    """The entries of a layer that holds one file: the file and its implicit parents."""

    def __init__(self, path: str, desc: Descriptor, chunks: list[Chunk] | None = None) -> None:
        self.path = normalize(path)
        self.file = Entry(self.path, EntryType.REG, mode=FILE_MODE, size=desc.size, digest=desc.digest)
        if chunks:
            self.file.chunks = chunks
        self._dirs: dict[str, str] = {}  # directory -> its one child's base name
        name = self.path
        while name:
            parent, _, base = name.rpartition("/")
            self._dirs[parent] = base
            name = parent

    def lookup(self, path: str) -> Entry | None:
        path = normalize(path)
        if path == self.path:
            return self.file
        if path in self._dirs:
            return Entry(path, EntryType.DIR, mode=0o755, implicit=True)
        return None

    def children(self, path: str) -> list[str]:
        base = self._dirs.get(normalize(path))
        return [base] if base is not None else []

    def entries(self) -> Iterator[Entry]:
        for d in sorted(self._dirs, key=lambda p: (p.count("/"), p)):
            yield Entry(d, EntryType.DIR, mode=0o755, implicit=True)
        yield self.file


class RawBlobIndex(LayerIndex):
    """A raw blob as a one-file layer index whose chunks are its chunk index's spans."""

    format = "raw"
    prefetch_end = 0

    def __init__(self, path: str, desc: Descriptor, blob: BlobChunks) -> None:
        if blob.digest != desc.digest or blob.size != desc.size:
            raise FormatError(f"chunk index entry {blob.digest} ({blob.size} bytes) is not layer {desc.digest}")
        self.blob_size = desc.size
        chunks = []
        for i, digest in enumerate(blob.chunks):
            start, end = blob.span(i)
            chunks.append(Chunk(start, end - start, start, end, digest))
        self.tree = OneFileTree(path, desc, chunks)

    def lookup(self, path: str) -> Entry | None:
        return self.tree.lookup(path)

    def children(self, path: str) -> list[str]:
        return self.tree.children(path)

    def entries(self) -> Iterator[Entry]:
        return self.tree.entries()

    def decode_chunk(self, chunk: Chunk, raw: bytes) -> bytes:
        try:
            return decode_raw_chunk(chunk, raw)
        except FormatError as e:
            raise FormatError(f"{self.tree.path}: {e}") from None


def decode_raw_chunk(chunk: Chunk, raw: bytes) -> bytes:
    """A raw chunk's bytes, once they hash to its digest (raises otherwise)."""
    if len(raw) != chunk.size:
        raise FormatError(f"chunk at {chunk.blob_offset}: {len(raw)} of {chunk.size} bytes")
    digestlib.verify(raw, chunk.digest, f"chunk at {chunk.blob_offset}")
    return raw
