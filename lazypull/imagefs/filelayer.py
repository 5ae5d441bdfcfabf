"""An artifact's raw layer without a chunk index, as the merged view sees it: one regular
file at its annotated path, streamed whole at its first read (checked against the blob
digest at its end) into a spool file, with the warning plain gzip layers give: a part of a
raw blob cannot be verified on its own. With a chunk index the layer is an IndexedLayer
over :class:`lazypull.format.rawblob.RawBlobIndex`, read lazily.
"""

from __future__ import annotations

import os
import tempfile
import threading
from typing import BinaryIO

from lazypull.errors import FormatError
from lazypull.format.index import Entry
from lazypull.format.rawblob import OneFileTree
from lazypull.imagefs.layers import LayerView, warn_streamed
from lazypull.oci.store import ImageStore, VerifyingReader
from lazypull.oci.types import Descriptor


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
