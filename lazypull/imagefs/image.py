"""Files out of container images without pulling them: :func:`open_image` and :class:`ImageFS`.

An :class:`ImageFS` is the image's rootfs as a read-only filesystem: the layers merged as
a container would see them, read lazily from the registry (or an ``oci:DIR[:TAG]``
layout). Only the TOCs of the layers a question reaches and the chunks of the files read
are fetched; every byte is verified before it is returned and cached by chunk digest, so
a second read (or a read of the same file in another image) is local.

One :class:`ImageFS` may be used from many threads at once; from asyncio, run its calls
in a thread pool (``await asyncio.to_thread(img.read_bytes, "etc/os-release")``). Errors
are ``lazypull.errors`` types; path errors are also the matching ``OSError`` subclasses
(``FileNotFoundError``, ``NotADirectoryError``, ...).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import stat as statmod
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lazypull.cache.chunks import ChunkCache
from lazypull.chunkindex.find import with_chunk_index
from lazypull.errors import (
    DigestMismatchError,
    ImageIsADirectoryError,
    ImageNotADirectoryError,
    ImageNotAFileError,
    OCIError,
)
from lazypull.format.counting import CountingSource
from lazypull.format.index import EntryType, LayerIndex
from lazypull.format.soci.dispatch import chunks_of, is_lazy, open_layer_index, ztoc_of
from lazypull.fs.fetcher import MIN_FETCH, READAHEAD, Fetcher
from lazypull.imagefs.filelayer import StreamedFileLayer
from lazypull.imagefs.layers import IndexedLayer, LayerView, StreamedLayer, find_index
from lazypull.imagefs.merged import MergedView, Node, join
from lazypull.imagefs.profileprefetch import DEFAULT_BUDGET, ProfilePrefetch
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.artifacts import Kind, file_path, is_tar_layer, kind_of
from lazypull.oci.dockerarchive import DockerArchive
from lazypull.oci.layout import OCILayout
from lazypull.oci.store import ImageStore
from lazypull.oci.types import Descriptor, ImageConfig, Index, Manifest, Platform, host_platform, is_index
from lazypull.registry.options import RegistryOptions

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

BUFFER_SIZE = 1 << 20  # what ImageFS.open's buffered reader asks the layer for at once
FETCH_WORKERS = 8  # ranges in flight in ImageFS.fetch
FETCH_PART = 8 << 20  # bytes per range in ImageFS.fetch

_TYPE_NAMES = {
    EntryType.DIR: "directory",
    EntryType.REG: "file",
    EntryType.SYMLINK: "symlink",
    EntryType.CHAR: "char",
    EntryType.BLOCK: "block",
    EntryType.FIFO: "fifo",
}
_TYPE_BITS = {
    EntryType.DIR: statmod.S_IFDIR,
    EntryType.REG: statmod.S_IFREG,
    EntryType.SYMLINK: statmod.S_IFLNK,
    EntryType.CHAR: statmod.S_IFCHR,
    EntryType.BLOCK: statmod.S_IFBLK,
    EntryType.FIFO: statmod.S_IFIFO,
}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lazypull`` (``~/.cache/lazypull``): per user, no root needed."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lazypull"


_CACHES: dict[Path, ChunkCache] = {}
_CACHES_LOCK = threading.Lock()


def _shared_cache(path: Path) -> ChunkCache:
    """One cache per directory in a process: its size accounting and writer thread are shared."""
    path = path.resolve()
    with _CACHES_LOCK:
        c = _CACHES.get(path)
        if c is None:
            c = _CACHES[path] = ChunkCache(path)
        return c


@dataclass(frozen=True)
class FileInfo:
    """What ``stat`` says about a path in an image."""

    path: str  # in the image, from its root, without a leading '/'
    type: str  # "file", "directory", "symlink", "char", "block" or "fifo"
    size: int  # bytes of a regular file; a symlink's target length; 0 otherwise
    mode: int  # st_mode: type bits and permissions
    uid: int
    gid: int
    mtime: float  # seconds since the epoch
    link_target: str  # a symlink's target as stored ("" otherwise)
    digest: str  # a regular file's content digest when the layer records it ("" otherwise)
    layer: str  # digest of the layer the entry comes from

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def is_dir(self) -> bool:
        return self.type == "directory"

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @property
    def is_symlink(self) -> bool:
        return self.type == "symlink"


@dataclass(frozen=True)
class FetchStats:
    """How lazy the reads were: blob bytes read vs the image's layers' size."""

    bytes_fetched: int  # from the registry or layout: footers, TOCs, chunks, streamed layers
    image_bytes: int  # sum of the layer blobs' sizes
    layers_opened: int
    layers: int


class ImageFS:
    """The merged, read-only rootfs of one image. Make one with :func:`open_image`."""

    def __init__(
        self,
        store: ImageStore,
        *,
        platform: Platform | None = None,
        cache_dir: Path | None = None,
        spool_dir: str | None = None,
        prefetch: bool = False,
        prefetch_budget: int = DEFAULT_BUDGET,
    ) -> None:
        self.store = store
        self.ref = store.name
        self.manifest_descriptor, self.manifest = _resolve_manifest(store, platform)
        #: An image, or an artifact whose layers are files (a ModelPack model, an ORAS push).
        self.kind = kind_of(self.manifest)
        config = store.fetch(self.manifest.config)
        if self.kind == Kind.IMAGE:
            ImageConfig.parse(config)  # checks it is an image config
        #: The config as JSON (an image's ``config["config"]["Env"]``, a model's ``["descriptor"]``, ...).
        self.config: dict[str, Any] = _json_object(config)
        self._cache = _shared_cache(cache_dir or default_cache_dir())
        self._spool_dir = spool_dir
        if self.kind == Kind.IMAGE:
            layers = _soci_layers(store, self.manifest_descriptor, self.manifest)
        else:  # raw layers a chunk index covers carry it: read lazily, like layers with a zTOC
            layers = with_chunk_index(store, self.manifest_descriptor.digest, self.manifest.layers, self.kind)
        self._view = MergedView([self._opener(d) for d in layers], what=self.ref)
        self._closed = False
        self._prefetch: ProfilePrefetch | None = None
        if prefetch:
            self._prefetch = ProfilePrefetch(
                store, self.manifest_descriptor, layers, self._view.layer, prefetch_budget
            ).start()

    def _opener(self, desc: Descriptor) -> Callable[[], LayerView]:
        def open_file_layer() -> LayerView:
            return StreamedFileLayer(self.store, desc, file_path(desc), self._spool_dir)

        def open_layer() -> LayerView:
            source = CountingSource(self.store.blob_source(desc))
            index: LayerIndex | None
            if ztoc_of(desc) is not None or chunks_of(desc) is not None:  # a zTOC or chunk index, as for mount
                index = open_layer_index(desc, source, self.store.blob_source, self._cache)
            else:
                index = find_index(self.store, self.manifest_descriptor, desc, source)
            if index is None:
                return StreamedLayer(self.store, desc, self._spool_dir)
            # A raw blob, no read-ahead: a tensor read fetches the chunks it covers and no more
            # (whole files: fetch(), in parallel ranges).
            readahead = 0 if index.format == "raw" else READAHEAD
            fetcher = Fetcher(
                index,
                source,
                self._cache,
                name=desc.digest[7:19],
                readahead=readahead,
                min_fetch=0 if readahead == 0 else MIN_FETCH,
            )
            return IndexedLayer(desc, index, fetcher, source)

        raw = not is_tar_layer(desc, self.kind) and chunks_of(desc) is None
        return open_file_layer if raw else open_layer

    # -- the image ---------------------------------------------------------------------------
    @property
    def digest(self) -> str:
        """The manifest's digest."""
        return self.manifest_descriptor.digest

    @property
    def layers(self) -> list[Descriptor]:
        return list(self.manifest.layers)

    @property
    def size(self) -> int:
        """Bytes of all layer blobs: what a full pull downloads."""
        return sum(d.size for d in self.manifest.layers)

    def wait_prefetch(self, timeout: float | None = None) -> int:
        """With ``prefetch=True``: wait for the profile's prefetch (at most *timeout* seconds);
        returns the bytes it fetched so far (0 without a profile)."""
        if self._prefetch is None:
            return 0
        self._prefetch.wait(timeout)
        return self._prefetch.bytes_fetched

    def stats(self) -> FetchStats:
        opened = self._view.opened()
        return FetchStats(sum(v.bytes_fetched for v in opened), self.size, len(opened), len(self.manifest.layers))

    # -- paths -------------------------------------------------------------------------------
    def _node(self, path: str | os.PathLike[str], follow: bool = True) -> Node:
        return self._view.resolve(os.fspath(path), follow=follow)

    def _info(self, node: Node) -> FileInfo:
        e = node.entry
        size = e.size if e.type == EntryType.REG else len(e.link_name.encode()) if e.type == EntryType.SYMLINK else 0
        perm = 0o777 if e.type == EntryType.SYMLINK else e.mode & 0o7777
        return FileInfo(
            path=node.path,
            type=_TYPE_NAMES.get(e.type, "file"),
            size=size,
            mode=_TYPE_BITS.get(e.type, statmod.S_IFREG) | perm,
            uid=e.uid,
            gid=e.gid,
            mtime=e.mtime_ns / 1e9,
            link_target=e.link_name if e.type == EntryType.SYMLINK else "",
            digest=e.digest if e.type == EntryType.REG else "",
            layer=self.manifest.layers[node.layer].digest if self.manifest.layers else "",
        )

    def stat(self, path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> FileInfo:
        """Metadata of *path* (of a symlink itself with ``follow_symlinks=False``)."""
        return self._info(self._node(path, follow_symlinks))

    def exists(self, path: str | os.PathLike[str]) -> bool:
        """True if *path* exists (a dangling symlink does not, as with ``os.path.exists``)."""
        try:
            self._node(path)
        except OSError:
            return False
        return True

    def is_dir(self, path: str | os.PathLike[str]) -> bool:
        return self.exists(path) and self.stat(path).is_dir

    def is_file(self, path: str | os.PathLike[str]) -> bool:
        return self.exists(path) and self.stat(path).is_file

    def ls(self, path: str | os.PathLike[str] = "/") -> list[str]:
        """Names in directory *path*, sorted."""
        return sorted(self._children(self._node(path)))

    def scandir(self, path: str | os.PathLike[str] = "/") -> list[FileInfo]:
        """The entries of directory *path* (symlinks not followed), sorted by name."""
        node = self._node(path)
        out = []
        for name in sorted(self._children(node)):
            child = self._view.lookup(join(node.path, name))
            if child is not None:
                out.append(self._info(child))
        return out

    def _children(self, node: Node) -> list[str]:
        if node.entry.type != EntryType.DIR:
            raise ImageNotADirectoryError(f"{self.ref}: /{node.path}: not a directory")
        return self._view.children(node.path)

    def walk(self, top: str | os.PathLike[str] = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        """Like ``os.walk`` (top-down, symlinks to directories not followed): yields
        (directory path from the image root, directory names, other names)."""
        stack = [self._node(top)]
        while stack:
            node = stack.pop()
            dirs: list[str] = []
            others: list[str] = []
            for info in self.scandir("/" + node.path):
                (dirs if info.is_dir else others).append(info.name)
            yield "/" + node.path, dirs, others
            for d in reversed(dirs):
                child = self._view.lookup(join(node.path, d))
                if child is not None:
                    stack.append(child)

    def readlink(self, path: str | os.PathLike[str]) -> str:
        """A symlink's target as stored in the image."""
        node = self._node(path, follow=False)
        if node.entry.type != EntryType.SYMLINK:
            raise ImageNotAFileError(f"{self.ref}: /{node.path}: not a symbolic link")
        return node.entry.link_name

    def realpath(self, path: str | os.PathLike[str]) -> str:
        """*path* with every symlink resolved inside the image, from the image root."""
        return "/" + self._node(path).path

    # -- contents ----------------------------------------------------------------------------
    def _file(self, path: str | os.PathLike[str]) -> Node:
        node = self._node(path)
        if node.entry.type == EntryType.DIR:
            raise ImageIsADirectoryError(f"{self.ref}: /{node.path}: is a directory")
        if node.entry.type != EntryType.REG:
            raise ImageNotAFileError(f"{self.ref}: /{node.path}: not a regular file")
        return node

    def read_range(self, node: Node, offset: int, size: int) -> bytes:
        """Verified bytes [offset, offset+size) of a regular file's node."""
        return self._view.layer(node.layer).read(node.entry, offset, size)

    def pread(self, path: str | os.PathLike[str], offset: int, size: int) -> bytes:
        """Verified bytes [offset, offset+size) of a regular file (fewer at its end): only
        the chunks the range covers are fetched."""
        return self.read_range(self._file(path), offset, size)

    def read_bytes(self, path: str | os.PathLike[str]) -> bytes:
        node = self._file(path)
        return self.read_range(node, 0, node.entry.size)

    def fetch(
        self,
        path: str | os.PathLike[str],
        *,
        workers: int = FETCH_WORKERS,
        part_size: int = FETCH_PART,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Fetch all of regular file *path* now, *workers* ranges at a time (one stream seldom
        fills a fast link), so later reads are local; returns its size. Besides each chunk, the
        whole file is checked against its content digest when the layer records one (a raw
        blob's: its blob digest). *progress* is called with the bytes of each part done."""
        node = self._file(path)
        size = node.entry.size
        digester = digestlib.Digester(digestlib.algorithm(node.entry.digest)) if node.entry.digest else None
        offsets = iter(range(0, size, part_size))
        carry, carry_offset = b"", 0  # bytes of a chunk that continues in the next part
        with ThreadPoolExecutor(max(workers, 1), thread_name_prefix="lazypull-fetch") as pool:
            window: deque[Future[bytes]] = deque()
            for off in itertools.islice(offsets, workers + 2):
                window.append(pool.submit(self.read_range, node, off, part_size))
            while window:  # in order, a bounded window ahead: the digest sees the bytes in order
                data = window.popleft().result()
                if node.entry.chunks:  # chunks on disk, those across two parts too
                    block = carry + data if carry else data
                    upto = self._persist(node, carry_offset, block)
                    carry, carry_offset = block[upto - carry_offset :], upto
                later = next(offsets, None)
                if later is not None:
                    window.append(pool.submit(self.read_range, node, later, part_size))
                if digester is not None:
                    digester.update(data)
                if progress is not None:
                    progress(len(data))
        if digester is not None and digester.digest() != node.entry.digest:
            raise DigestMismatchError(f"{self.ref}: /{node.path}", node.entry.digest, digester.digest())
        return size

    def _persist(self, node: Node, offset: int, data: bytes) -> int:
        """Make sure the chunks wholly inside *data* (file bytes from *offset*) are on disk
        (the cache drops chunks when its writer is behind; a fetched file must stay local).
        Returns the file offset where the last of them ends (*offset* when none)."""
        end = offset
        for c in node.entry.chunks_for(offset, len(data)):
            lo = c.file_offset - offset
            if lo >= 0 and lo + c.size <= len(data):
                self._cache.persist(c.digest, data[lo : lo + c.size])
                end = c.file_offset + c.size
        return end

    def read_text(self, path: str | os.PathLike[str], encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes(path).decode(encoding, errors)

    def open(self, path: str | os.PathLike[str], buffering: int = BUFFER_SIZE) -> io.BufferedReader:
        """A binary, seekable file of the image (``read``, ``readinto``, ``seek``, ``with``)."""
        node = self._file(path)
        return io.BufferedReader(ImageFile(self, node), buffer_size=max(buffering, io.DEFAULT_BUFFER_SIZE))

    # -- life cycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Release layer files and spools; the chunks read are on disk in the cache when it returns."""
        if not self._closed:
            self._closed = True
            if self._prefetch is not None:
                self._prefetch.close()
            self._view.close()
            self._cache.flush()

    def __enter__(self) -> ImageFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ImageFS {self.ref} {self.digest[:19]}>"


class ImageFile(io.RawIOBase):
    """One regular file of an image, positioned reads over the layer's verified reader."""

    def __init__(self, fs: ImageFS, node: Node) -> None:
        self._fs = fs
        self._node = node
        self._size = node.entry.size
        self._pos = 0
        self.name = "/" + node.path

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: WriteableBuffer) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        view = memoryview(b)
        n = min(len(view), self._size - self._pos)
        if n <= 0:
            return 0
        data = self._fs.read_range(self._node, self._pos, n)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        data = self._fs.read_range(self._node, self._pos, max(self._size - self._pos, 0))
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos


def _soci_layers(store: ImageStore, subject: Descriptor, manifest: Manifest) -> list[Descriptor]:
    """The manifest's layers, a zTOC attached to those the image's SOCI index covers (what
    ``lazypull mount`` reads lazily); only images in a registry have SOCI indexes."""
    if isinstance(store, OCILayout | DockerArchive) or all(is_lazy(d) for d in manifest.layers):
        return list(manifest.layers)
    from lazypull.registry.repository import RegistryStore
    from lazypull.soci.find import soci_ztocs, with_soci

    if not isinstance(store, RegistryStore):
        return list(manifest.layers)

    return with_soci(manifest.layers, soci_ztocs(store.client, store.ref, subject.digest, manifest.annotations))


def _json_object(data: bytes) -> dict[str, Any]:
    """A config as JSON; {} when an artifact's config is not a JSON object (it may be anything)."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _resolve_manifest(store: ImageStore, platform: Platform | None) -> tuple[Descriptor, Manifest]:
    """The image manifest the store's reference names (for *platform* in an index)."""
    desc = store.resolve()
    if is_index(desc.media_type):
        desc = Index.parse(store.fetch(desc), desc.media_type).select(platform or host_platform())
    if desc.media_type not in mt.MANIFEST_TYPES:
        raise OCIError(f"{store.name}: {desc.digest} is a {desc.media_type}, not an image manifest")
    return desc, Manifest.parse(store.fetch(desc), desc.media_type)


def open_image(
    ref: str,
    *,
    platform: str | Platform | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    plain_http: bool = False,
    insecure: bool = False,
    user: str | None = None,
    docker_config: str | os.PathLike[str] | None = None,
    registry_config: str | os.PathLike[str] | None = None,
    prefetch: bool = False,
    prefetch_budget: int = DEFAULT_BUDGET,
) -> ImageFS:
    """Open an image's rootfs for reading without pulling it.

    *ref* is a registry reference (``localhost:5000/app:v1``, ``...@sha256:...``) or an
    OCI layout ``oci:DIR[:TAG]``. The keywords are the CLI's registry flags: *plain_http*,
    *insecure* (skip TLS verification), *user* (``NAME:PASSWORD``; default: the
    ``LAZYPULL_USER`` environment variable, as for the CLI), *docker_config*
    (credentials), *registry_config* (hosts and mirrors). *platform* (``os/arch[/variant]``)
    picks from a multi-platform index (default: this machine's). *cache_dir* holds verified
    chunks (default ``~/.cache/lazypull``). eStargz and zstd:chunked layers are read
    lazily, and so are gzip layers a SOCI index gives a zTOC (a SOCI-enabled image's v2
    index first, else a v1 index beside the image in its registry). *prefetch*: fetch what the image's published
    prefetch profile (``lazypull profile``) names, up to *prefetch_budget* bytes of content,
    in the background while you read (``wait_prefetch()`` waits for it).
    """
    from lazypull.registry.stores import open_store

    opts = RegistryOptions(
        plain_http=plain_http,
        insecure=insecure,
        user=user or os.environ.get("LAZYPULL_USER") or None,
        docker_config=Path(docker_config) if docker_config else None,
        registry_config=Path(registry_config) if registry_config else None,
    )
    plat = Platform.parse(platform) if isinstance(platform, str) else platform
    store = open_store(ref, opts)
    return ImageFS(
        store,
        platform=plat,
        cache_dir=Path(cache_dir) if cache_dir else None,
        prefetch=prefetch,
        prefetch_budget=prefetch_budget,
    )


__all__ = ["FetchStats", "FileInfo", "ImageFS", "ImageFile", "open_image"]
