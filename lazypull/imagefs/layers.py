"""One image layer as the merged view sees it: its own entries (whiteouts included) and reads.

A layer with a verified index (eStargz, zstd:chunked; SOCI zTOCs plug in through
:func:`register_index_finder`) is read lazily: chunks are fetched, verified by the index
and cached on demand. Any other layer is streamed once, whole, because a plain gzip or
tar blob can only be verified against its digest at its end; its tar is spooled to a
temporary file so later reads are local.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
import tempfile
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

from lazypull.errors import FormatError
from lazypull.format import open_layer
from lazypull.format.counting import CountingSource
from lazypull.format.estargz_reader import safe_name
from lazypull.format.index import Entry, EntryType, LayerIndex
from lazypull.format.tarstream import open_decompressed
from lazypull.fs.fetcher import Fetcher
from lazypull.oci import mediatypes as mt
from lazypull.oci.store import ImageStore, VerifyingReader
from lazypull.oci.types import Descriptor
from lazypull.source import ReadAt

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


class StreamedLayerWarning(UserWarning):
    """A layer has no index for lazy reads and is downloaded whole."""


def warn_streamed(
    desc: Descriptor,
    doing: str = "downloading all of it once",
    how: str = "convert the image to eStargz, or index it with lazypull soci create",
) -> None:
    """Say (once per layer and call site) that *desc* is fetched whole, and how big it is:
    the one surprise in a lazy pull, so it is named where it happens."""
    warnings.warn(
        f"layer {desc.digest} ({size_text(desc.size)}, {desc.media_type}) has no index for lazy reads: {doing} "
        f"({how}, to read it lazily)",
        StreamedLayerWarning,
        stacklevel=_caller_level(),
    )


def size_text(n: int) -> str:
    """Bytes for people: ``4417 bytes``, ``73.3 MB``."""
    if n < 10_000:
        return f"{n} bytes"
    x, unit = n / 1000, "kB"
    for bigger in ("MB", "GB", "TB"):
        if round(x, 1) < 1000:
            break
        x, unit = x / 1000, bigger
    return f"{x:.1f} {unit}"


class LayerView(ABC):
    """Raw entries of one layer, by normalised path ('' is the root)."""

    desc: Descriptor

    @abstractmethod
    def get(self, path: str) -> Entry | None:
        """The layer's own entry at *path*, whiteout files (``.wh.NAME``) included."""

    @abstractmethod
    def children(self, path: str) -> list[str]:
        """Base names directly under *path* in this layer."""

    @abstractmethod
    def read(self, entry: Entry, offset: int, size: int) -> bytes:
        """Verified bytes [offset, offset+size) of a regular file of this layer."""

    @property
    @abstractmethod
    def bytes_fetched(self) -> int:
        """Bytes of the blob read so far (footer, index, chunks or the whole stream)."""

    @property
    def lazy(self) -> bool:
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and descriptors."""


class IndexedLayer(LayerView):
    """A layer read through its verified index, chunk by chunk, via the shared cache."""

    def __init__(self, desc: Descriptor, index: LayerIndex, fetcher: Fetcher, source: CountingSource) -> None:
        self.desc = desc
        self.index = index
        self.fetcher = fetcher
        self.source = source

    def get(self, path: str) -> Entry | None:
        return self.index.lookup(path)

    def children(self, path: str) -> list[str]:
        return self.index.children(path)

    def read(self, entry: Entry, offset: int, size: int) -> bytes:
        return self.fetcher.read(entry, offset, size)

    @property
    def bytes_fetched(self) -> int:
        return self.source.bytes_read

    def close(self) -> None:
        close = getattr(self.source.inner, "close", None)
        if close is not None:
            close()


class StreamedLayer(LayerView):
    """A layer without an index: streamed once (verified at its end), its tar spooled."""

    def __init__(self, store: ImageStore, desc: Descriptor, spool_dir: str | None = None) -> None:
        self.desc = desc
        self._store = store
        self._spool_dir = spool_dir
        self._entries: dict[str, Entry] = {"": Entry("", EntryType.DIR, mode=0o755, implicit=True)}
        self._children: dict[str, dict[str, None]] = {"": {}}
        self._data: dict[str, int] = {}  # regular file -> offset of its bytes in the spool
        self._spool: BinaryIO | None = None
        self._fetched = 0
        self._lock = threading.Lock()
        self._loaded = False

    @property
    def lazy(self) -> bool:
        return False

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            warn_streamed(self.desc)
            spool = tempfile.TemporaryFile(prefix="lazypull-layer-", dir=self._spool_dir)  # noqa: SIM115
            try:
                self._stream_into(spool)
            except BaseException:
                spool.close()
                raise
            self._spool = spool
            self._loaded = True

    def _stream_into(self, spool: BinaryIO) -> None:
        with self._store.open_blob(self.desc) as raw:
            verified = _CountingReader(VerifyingReader(raw, self.desc))
            plain = open_decompressed(verified)
            tee = _Tee(plain, spool)
            try:
                tf = tarfile.open(fileobj=tee, mode="r|", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
                with tf:
                    for ti in tf:
                        self._add(ti)
            except (tarfile.TarError, EOFError, OSError) as e:
                raise FormatError(f"layer {self.desc.digest} is not a valid tar: {e}") from None
            while tee.read(1 << 20):  # past the end-of-archive blocks
                pass
            while verified.read(1 << 20):  # to the blob's end: the digest is checked there
                pass
            self._fetched = verified.count

    def _add(self, ti: tarfile.TarInfo) -> None:
        name = safe_name(ti.name) if ti.name else ""
        if not name:
            return
        if ti.isdir():
            typ = EntryType.DIR
        elif ti.issym():
            typ = EntryType.SYMLINK
        elif ti.islnk():
            typ = EntryType.HARDLINK
        elif ti.ischr():
            typ = EntryType.CHAR
        elif ti.isblk():
            typ = EntryType.BLOCK
        elif ti.isfifo():
            typ = EntryType.FIFO
        elif ti.isreg():
            typ = EntryType.REG
        else:
            raise FormatError(f"{ti.name}: unsupported tar entry type {ti.type!r}")
        xattrs = {
            k[13:]: v.encode("utf-8", "surrogateescape")
            for k, v in ti.pax_headers.items()
            if k.startswith("SCHILY.xattr.")
        }
        e = Entry(
            name,
            typ,
            mode=ti.mode & 0o7777,
            uid=ti.uid,
            gid=ti.gid,
            uname=ti.uname,
            gname=ti.gname,
            size=ti.size if typ == EntryType.REG else 0,
            mtime_ns=int(ti.mtime) * 1_000_000_000,
            link_name=safe_name(ti.linkname) if typ == EntryType.HARDLINK else ti.linkname,
            dev_major=ti.devmajor,
            dev_minor=ti.devminor,
            xattrs=xattrs,
        )
        parent, _, base = name.rpartition("/")
        self._ensure_dir(parent)
        old = self._entries.get(name)
        if old is not None and old.type == EntryType.DIR and typ == EntryType.DIR:
            self._entries[name] = e  # a directory entry again: its children stay
        else:
            if old is not None:
                self._drop_below(name)
            self._entries[name] = e
            if typ == EntryType.DIR:
                self._children[name] = {}
        self._children[parent][base] = None
        if typ == EntryType.REG:
            self._data[name] = ti.offset_data

    def _ensure_dir(self, name: str) -> None:
        e = self._entries.get(name)
        if e is not None and e.type == EntryType.DIR:
            return
        parent, _, base = name.rpartition("/")
        self._ensure_dir(parent)
        self._entries[name] = Entry(name, EntryType.DIR, mode=0o755, implicit=True)
        self._children[name] = {}
        self._children[parent][base] = None

    def _drop_below(self, name: str) -> None:
        for kid in self._children.pop(name, {}):
            child = f"{name}/{kid}"
            self._drop_below(child)
            self._entries.pop(child, None)
            self._data.pop(child, None)

    def get(self, path: str) -> Entry | None:
        self._load()
        return self._entries.get(path)

    def children(self, path: str) -> list[str]:
        self._load()
        return list(self._children.get(path, ()))

    def read(self, entry: Entry, offset: int, size: int) -> bytes:
        self._load()
        end = min(offset + size, entry.size)
        if offset >= end:
            return b""
        assert self._spool is not None
        data = os.pread(self._spool.fileno(), end - offset, self._data[entry.name] + offset)
        if len(data) != end - offset:
            raise FormatError(f"layer {self.desc.digest}: {entry.name}: short read from the spooled layer")
        return data

    @property
    def bytes_fetched(self) -> int:
        return self._fetched

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _caller_level() -> int:
    """The stacklevel of the first frame outside lazypull: warnings point at the user's call."""
    level, frame = 1, sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


class _CountingReader(io.RawIOBase):
    def __init__(self, inner: io.RawIOBase) -> None:
        self._inner = inner
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: WriteableBuffer) -> int:
        n = self._inner.readinto(b) or 0
        self.count += n
        return n


class _Tee(io.RawIOBase):
    """Reads from *src*, writing everything read to *sink* (the tar's offsets stay valid in it)."""

    def __init__(self, src: BinaryIO, sink: BinaryIO) -> None:
        self._src = src
        self._sink = sink

    def readable(self) -> bool:
        return True

    def readinto(self, b: WriteableBuffer) -> int:
        view = memoryview(b)
        data = self._src.read(len(view))
        n = len(data)
        view[:n] = data
        self._sink.write(data)
        return n


# -- finding an index for a layer -----------------------------------------------------------

#: (store, image manifest descriptor, layer descriptor, the layer's byte source) -> a verified
#: index, or None when this finder does not know the layer.
IndexFinder = Callable[[ImageStore, Descriptor, Descriptor, ReadAt], "LayerIndex | None"]


def toc_index(store: ImageStore, manifest: Descriptor, layer: Descriptor, source: ReadAt) -> LayerIndex | None:
    """eStargz and zstd:chunked: the TOC, verified against the manifest's TOC digest annotation."""
    toc_digest = layer.annotations.get(mt.ANNOTATION_TOC_DIGEST)
    return open_layer(source, toc_digest=toc_digest) if toc_digest else None


_FINDERS: list[IndexFinder] = [toc_index]


def register_index_finder(finder: IndexFinder) -> None:
    """Add a way to find a layer's index (e.g. a SOCI zTOC for a plain gzip layer).

    Finders are asked in registration order after the built-in TOC finder; the first
    index returned is used, and a layer no finder knows is streamed."""
    if finder not in _FINDERS:
        _FINDERS.append(finder)


def find_index(store: ImageStore, manifest: Descriptor, layer: Descriptor, source: ReadAt) -> LayerIndex | None:
    for finder in list(_FINDERS):
        index = finder(store, manifest, layer, source)
        if index is not None:
            return index
    return None
