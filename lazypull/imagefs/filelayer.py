"""An artifact's raw layer as the merged view sees it: one regular file at its annotated path.

With a chunk index (:mod:`lazypull.chunkindex`) the file is read lazily through the
same fetcher as eStargz layers: ranges of the blob, each chunk checked against its digest
before it is returned or cached. Without one, the first read streams the whole blob once,
checked against its digest at its end, into a spool file (with the warning plain gzip
layers give): a part of a raw blob cannot be verified on its own.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from typing import BinaryIO

from lazypull.chunkindex.index import BlobChunks
from lazypull.errors import FormatError
from lazypull.format.index import Chunk, Entry, EntryType, LayerIndex, normalize
from lazypull.imagefs.layers import LayerView, warn_streamed
from lazypull.oci import digest as digestlib
from lazypull.oci.store import ImageStore, VerifyingReader
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
        if len(raw) != chunk.size:
            raise FormatError(f"{self.tree.path}: chunk at {chunk.blob_offset}: {len(raw)} of {chunk.size} bytes")
        digestlib.verify(raw, chunk.digest, f"{self.tree.path}: chunk at {chunk.blob_offset}")
        return raw


class StreamedFileLayer(LayerView):
    """A raw blob without a chunk index: listed from its descriptor, streamed whole (verified)
    at its first read."""

    def __init__(self, store: ImageStore, desc: Descriptor, path: str, spool_dir: str | None = None) -> None:
        self.desc = desc
        self.tree = OneFileTree(path, desc)
        self._store = store
        self._spool_dir = spool_dir
        self._spool: BinaryIO | None = None
        self._fetched = 0
        self._lock = threading.Lock()

    @property
    def lazy(self) -> bool:
        return False

    def get(self, path: str) -> Entry | None:
        return self.tree.lookup(path)

    def children(self, path: str) -> list[str]:
        return self.tree.children(path)

    def _load(self) -> BinaryIO:
        with self._lock:
            if self._spool is not None:
                return self._spool
            warn_streamed(self.desc, how="index the artifact with lazypull index create")
            spool = tempfile.TemporaryFile(prefix="lazypull-blob-", dir=self._spool_dir)  # noqa: SIM115
            try:
                with VerifyingReader(self._store.open_blob(self.desc), self.desc) as src:
                    while data := src.read(1 << 20):
                        spool.write(data)
                        self._fetched += len(data)
                spool.flush()
            except BaseException:
                spool.close()
                raise
            self._spool = spool
            return spool

    def read(self, entry: Entry, offset: int, size: int) -> bytes:
        end = min(offset + size, entry.size)
        if offset >= end:
            return b""
        spool = self._load()
        data = os.pread(spool.fileno(), end - offset, offset)
        if len(data) != end - offset:
            raise FormatError(f"blob {self.desc.digest}: short read from the spooled blob")
        return data

    @property
    def bytes_fetched(self) -> int:
        return self._fetched

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
