"""The interface every image location implements (OCI layout dir, registry).

Commands like ``convert`` and ``copy`` speak only this interface, so any pairing of
source and target works. Blob reads are streams; small documents (manifests, configs)
are read whole, size-limited and verified against their digest.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, BinaryIO

from lazypull.errors import DigestMismatchError, LazypullError
from lazypull.oci import digest as digestlib
from lazypull.oci.types import MAX_MANIFEST_BYTES, Descriptor

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from lazypull.source import ReadAt


class ImageStore(ABC):
    """A place images live: ``oci:DIR[:TAG]`` layouts and registry repositories."""

    #: Human-readable name of the location (for messages and progress lines).
    name: str
    #: The tag the reference names, if any (pushes of converted images use it).
    tag: str | None = None

    @abstractmethod
    def resolve(self) -> Descriptor:
        """The descriptor (index or manifest) this store's reference points at."""

    @abstractmethod
    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """A stream of the blob's bytes. Not verified: wrap it in :class:`VerifyingReader`."""

    @abstractmethod
    def has_blob(self, desc: Descriptor) -> bool: ...

    @abstractmethod
    def push_blob(self, desc: Descriptor, stream: BinaryIO) -> None:
        """Store a blob whose digest and size the caller already knows."""

    @abstractmethod
    def push_manifest(self, desc: Descriptor, data: bytes, tag: str | None = None) -> None:
        """Store a manifest or index; tag it when *tag* is given."""

    def blob_source(self, desc: Descriptor) -> ReadAt:
        """Random access to a blob (local pread or HTTP Range). Bytes are not verified here:
        layer readers verify what they decode against the TOC."""
        raise LazypullError(f"{self.name} does not support random access to blobs")

    def fetch(self, desc: Descriptor, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """Read a small blob whole, verified against its digest and size."""
        if desc.size > limit:
            raise LazypullError(f"{desc.digest} is {desc.size} bytes, over the {limit} byte limit")
        with self.open_blob(desc) as f:
            data = f.read(desc.size + 1)
        if len(data) != desc.size:
            raise LazypullError(f"{desc.digest}: expected {desc.size} bytes, got {len(data)}")
        digestlib.verify(data, desc.digest, what=f"blob {desc.digest} from {self.name}")
        return data

    def push_bytes(self, desc: Descriptor, data: bytes) -> None:
        if not self.has_blob(desc):
            self.push_blob(desc, io.BytesIO(data))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or locks."""


class VerifyingReader(io.RawIOBase):
    """Wrap a blob stream; raise on EOF if the bytes do not match the descriptor."""

    def __init__(self, raw: BinaryIO, desc: Descriptor, what: str = "") -> None:
        self._raw = raw
        self._desc = desc
        self._d = digestlib.Digester(digestlib.algorithm(desc.digest))
        self._what = what or f"blob {desc.digest}"
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: WriteableBuffer) -> int:
        n = self._raw.readinto(b) if hasattr(self._raw, "readinto") else self._readinto_fallback(b)
        if n:
            self._d.update(memoryview(b)[:n])
            if self._d.size > self._desc.size:
                raise LazypullError(f"{self._what}: more than the declared {self._desc.size} bytes")
        elif not self._done:
            self._done = True
            if self._d.size != self._desc.size:
                raise LazypullError(
                    f"{self._what}: truncated ({self._d.size} of {self._desc.size} bytes; an interrupted "
                    "copy or download): copy the image again from its source, or retry"
                )
            actual = self._d.digest()
            if actual != self._desc.digest:
                raise DigestMismatchError(self._what, self._desc.digest, actual)
        return n

    def _readinto_fallback(self, b: WriteableBuffer) -> int:
        view = memoryview(b)
        data = self._raw.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()
