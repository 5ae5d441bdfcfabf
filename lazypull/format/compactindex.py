"""A layer index as one immutable buffer (a file the layer server mmaps): ~0 B of Python
heap per entry, so a process serving hundreds of layers holds a small fixed amount each.

The validated :class:`~lazypull.format.estargz_reader.TOCIndex` is built as before, then
serialised (:mod:`lazypull.format.compactwrite`) and dropped. Readers decode fixed-size
records with ``struct.unpack_from`` and materialise small :class:`Entry`/:class:`Chunk`
objects on demand (the last few are kept, so a file being read keeps one Entry).

Layout (little endian): a header (magic, version, caller's key, SHA-256 of the body,
counts), then fixed-size sections: nodes (one per index entry, in :meth:`entries` order),
chunks and their order in the blob, raw 32-byte digests, device numbers, owner names,
per-directory children in TOC order and sorted by name (lookups bisect), the overlay
view's directory entries sorted by name and their readdir order, and a string pool
(names, link targets, xattrs).

The overlay view (what :class:`lazypull.fs.layer.LayerFS` shows: whiteouts as 0/0 char
devices, opaque directories, hidden landmarks, hardlinks sharing one inode) is computed
once when writing (:mod:`lazypull.format.overlayview`), with its inode numbers (a shown
node's place in index order plus one; files written before numbered the shown nodes
1, 2, 3...: both are read alike, so a live mount keeps the numbers its kernel holds).

A file is checked when opened (section sizes against its length, its body against the
SHA-256 in the header) and every record read is bounds-checked; anything off raises
:class:`FormatError`, and the caller rebuilds the file from the TOC. Chunk bytes are
still verified by ``decode_chunk``.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, NamedTuple, TypeVar

from lazypull.errors import FormatError
from lazypull.format.index import NO_XATTRS, Chunk, Entry, EntryType, LayerIndex, normalize

#: Formats whose index is kept compact (a SOCI index keeps its span state in Python).
COMPACT_FORMATS = frozenset({"estargz", "zstdchunked", "raw"})
T = TypeVar("T")
MAGIC = b"LPINDEX\0"
VERSION = 1
NONE = 0xFFFFFFFF
ROOT_PARENT = NONE

# Node flags.
IMPLICIT = 1  # a parent directory the layer has no entry for
FS_HIDDEN = 2  # no inode in the overlay presentation (hardlinks, landmarks, opaque markers)
FS_WHITEOUT = 4  # ".wh.NAME": shown as a 0/0 character device NAME
FS_OPAQUE = 8  # shown with trusted.overlay.opaque=y

# Type codes as stored (fixed: a new EntryType goes at the end, or VERSION changes).
TYPES = [
    EntryType.DIR,
    EntryType.REG,
    EntryType.SYMLINK,
    EntryType.HARDLINK,
    EntryType.CHAR,
    EntryType.BLOCK,
    EntryType.FIFO,
]
TYPE_CODE = {t: i for i, t in enumerate(TYPES)}

HEADER = struct.Struct("<8sII32s32s16sQQ12I")
HEADER_SIZE = HEADER.size
# type, flags, mode, parent, name_off, name_len, (pad), uname, gname, uid, gid, size,
# mtime_s, mtime_ns, nlink, xattr_off, dev, digest, a, b, c, d, e.
# a..e by type: REG a,b = chunk range; DIR a,b = children range, c,d = dirent range,
# e = nlink as presented (2 + subdirectories); SYMLINK/HARDLINK a,b = link target.
NODE = struct.Struct("<BBHIIHHIIQQQqIIIIIIIIII")
NODE_NAME = struct.Struct("<IH")  # name_off, name_len at offset 8 of a node
CHUNK = struct.Struct("<QQQIIII")  # file_offset, blob_offset, blob_end, size, inner_offset, digest, node
DEV = struct.Struct("<QQ")
ATOM = struct.Struct("<II")  # offset, length of an owner name in the pool
U32 = struct.Struct("<I")
DIRENT = struct.Struct("<IHI")  # name_off, name_len, ino
XATTR = struct.Struct("<II")  # key length, value length
DIGEST_SIZE = 32
Decoder = Callable[[Chunk, bytes], bytes]
ENTRY_CACHE = 32  # materialised entries kept per layer (a read keeps using the same one)
PATH_CACHE = 128  # directory paths kept per layer


class Node(NamedTuple):
    """One record of the node table, as stored."""

    type: int
    flags: int
    mode: int
    parent: int
    name_off: int
    name_len: int
    pad: int
    uname: int
    gname: int
    uid: int
    gid: int
    size: int
    mtime_s: int
    mtime_ns: int
    nlink: int
    xattr: int
    dev: int
    digest: int
    a: int
    b: int
    c: int
    d: int
    e: int

    @property
    def entry_type(self) -> EntryType:
        return TYPES[self.type]


def decoder_for(fmt: str) -> Decoder:
    """The chunk decoder of a format whose index was re-read from a file."""
    if fmt == "estargz":
        from lazypull.format.estargz_reader import GzipChunkDecoder

        return GzipChunkDecoder()
    if fmt == "zstdchunked":
        from lazypull.format.zstdchunked import ZstdChunkDecoder

        return ZstdChunkDecoder()
    if fmt == "raw":
        from lazypull.format.rawblob import decode_raw_chunk

        return decode_raw_chunk
    raise FormatError(f"compact index of format {fmt!r}: no chunk decoder for it")


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


class _LRU(Generic[T]):
    """A small thread-safe LRU (functools.lru_cache on a method would keep the index alive)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[int, T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, k: int) -> T | None:
        with self._lock:
            v = self._d.get(k)
            if v is not None:
                self._d.move_to_end(k)
            return v

    def put(self, k: int, v: T) -> T:
        with self._lock:
            self._d[k] = v
            if len(self._d) > self.size:
                self._d.popitem(last=False)
        return v


class CompactIndex(LayerIndex):
    """A :class:`LayerIndex` read from a compact buffer (bytes or a read-only mmap)."""

    # from the header
    key_hash: bytes
    body_hash: bytes
    n_nodes: int
    n_dirents: int
    fs_inodes: int
    shown_inodes: int

    def __init__(self, buf: bytes | mmap.mmap, *, decoder: Decoder | None = None) -> None:
        if len(buf) < HEADER.size:
            raise FormatError(f"compact index is {len(buf)} bytes: truncated")
        h = HEADER.unpack_from(buf, 0)
        magic, version, header_size, self.key_hash, self.body_hash, fmt = h[:6]
        if magic != MAGIC:
            raise FormatError("not a compact layer index (bad magic)")
        if version != VERSION or header_size != HEADER.size:
            raise FormatError(f"compact index version {version}, expected {VERSION}")
        self.format = fmt.rstrip(b"\0").decode("ascii", "replace")
        self.blob_size, self.prefetch_end = h[6], h[7]
        (self.n_nodes, n_chunks, n_digests, n_devs, n_atoms, n_kids, self.n_dirents, self.fs_inodes, n_strings) = h[
            8:17
        ]
        self.shown_inodes = h[17] or self.fs_inodes  # files written before numbered only the shown
        sizes = (
            self.n_nodes * NODE.size, n_chunks * CHUNK.size, n_chunks * 4, n_digests * DIGEST_SIZE,
            n_devs * DEV.size, n_atoms * ATOM.size, n_kids * 4, n_kids * 4, self.n_dirents * DIRENT.size,
            self.n_dirents * 4, self.fs_inodes * 4, n_strings,
        )  # fmt: skip
        offs = []
        pos = HEADER.size
        for s in sizes:
            offs.append(pos)
            pos += s
        if pos != len(buf) or self.n_nodes == 0:
            raise FormatError(f"compact index is {len(buf)} bytes, its header describes {pos}: truncated or corrupt")
        (
            self._nodes, self._chunks, self._chunk_order, self._digests, self._devs, self._atoms,
            self._kids, self._kids_sorted, self._dirents, self._readdir_order, self._inodes, self._strings,
        ) = offs  # fmt: skip
        self._n = (n_chunks, n_digests, n_devs, n_atoms, n_kids, n_strings)
        self._buf = buf
        self._decoder = decoder or decoder_for(self.format)
        self._entries: _LRU[Entry] = _LRU(ENTRY_CACHE)
        self._paths: _LRU[str] = _LRU(PATH_CACHE)

    @classmethod
    def open(cls, path: Path, key: bytes = b"", *, decoder: Decoder | None = None, verify: bool = True) -> CompactIndex:
        """Map the file at *path*; FormatError unless it is intact and made for *key*."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise FormatError(f"compact index {path} is empty")
            m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            idx = cls(m, decoder=decoder)
            if idx.key_hash != hashlib.sha256(key).digest():
                raise FormatError(f"compact index {path} was made for another layer or TOC")
            if verify:
                f.seek(HEADER_SIZE)  # read, not through the mapping: its pages stay out of this process
                if hashlib.file_digest(f, "sha256").digest() != idx.body_hash:
                    raise FormatError(f"compact index {path} is corrupt (checksum mismatch)")
        return idx

    @property
    def nbytes(self) -> int:
        return len(self._buf)

    def close(self) -> None:
        """Unmap the file (a mapping also holds an fd of its own): without it, an unmounted
        layer's index stays mapped until the collector happens to free it."""
        if isinstance(self._buf, mmap.mmap) and not self._buf.closed:
            try:
                self._buf.close()
            except BufferError:
                pass  # a request still decodes from it: the collector frees it later

    # -- records -----------------------------------------------------------------------
    def node(self, i: int) -> Node:
        if not 0 <= i < self.n_nodes:
            raise FormatError(f"compact index: no node {i}")
        nd = Node._make(NODE.unpack_from(self._buf, self._nodes + i * NODE.size))
        if nd.type >= len(TYPES):
            raise FormatError(f"compact index: node {i} has an unknown type")
        return nd

    def string(self, off: int, n: int) -> bytes:
        if off + n > self._n[5]:
            raise FormatError("compact index: a string lies outside the pool")
        return self._buf[self._strings + off : self._strings + off + n]

    def base_name(self, i: int) -> bytes:
        if not 0 <= i < self.n_nodes:
            raise FormatError(f"compact index: no node {i}")
        off, n = NODE_NAME.unpack_from(self._buf, self._nodes + i * NODE.size + 8)
        return self.string(off, n)

    def _digest(self, i: int) -> str:
        if i == NONE:
            return ""
        if i >= self._n[1]:
            raise FormatError("compact index: digest out of range")
        off = self._digests + i * DIGEST_SIZE
        return "sha256:" + self._buf[off : off + DIGEST_SIZE].hex()

    def _atom(self, i: int) -> str:
        if i >= self._n[3]:
            raise FormatError("compact index: owner name out of range")
        off, n = ATOM.unpack_from(self._buf, self._atoms + i * ATOM.size)
        return self.string(off, n).decode("utf-8", "surrogateescape")

    def dev(self, nd: Node) -> tuple[int, int]:
        if nd.dev == NONE:
            return 0, 0
        if nd.dev >= self._n[2]:
            raise FormatError("compact index: device number out of range")
        return DEV.unpack_from(self._buf, self._devs + nd.dev * DEV.size)

    def xattrs(self, nd: Node) -> dict[str, bytes]:
        if nd.xattr == NONE:
            return {}
        (count,) = U32.unpack_from(self.string(nd.xattr, 4))
        out: dict[str, bytes] = {}
        pos = nd.xattr + 4
        for _ in range(count):
            kn, vn = XATTR.unpack_from(self.string(pos, XATTR.size))
            pos += XATTR.size
            k = self.string(pos, kn).decode("utf-8", "surrogateescape")
            out[k] = self.string(pos + kn, vn)
            pos += kn + vn
        return out

    def _u32(self, base: int, i: int, n: int) -> int:
        if i >= n:
            raise FormatError("compact index: table index out of range")
        v: int = U32.unpack_from(self._buf, base + 4 * i)[0]
        return v

    def _path(self, i: int) -> str:
        parts: list[bytes] = []
        for _ in range(self.n_nodes):
            if i == 0:
                return b"/".join(reversed(parts)).decode("utf-8", "surrogateescape")
            parts.append(self.base_name(i))
            i = self.node(i).parent
        raise FormatError("compact index: parent chain does not reach the root")

    def _dir_path(self, i: int) -> str:
        p = self._paths.get(i)
        if p is None:
            p = self._paths.put(i, self._path(i))
        return p

    def path(self, i: int) -> str:
        """The normalised path of node *i*."""
        if i == 0:
            return ""
        parent = self.node(i).parent
        name = self.base_name(i).decode("utf-8", "surrogateescape")
        return f"{self._dir_path(parent)}/{name}" if parent else name

    def entry(self, i: int) -> Entry:
        """Node *i* as an Entry; the last few are kept (a file being read keeps its Entry)."""
        e = self._entries.get(i)
        if e is None:
            e = self._entries.put(i, self._entry(i))
        return e

    def chunks(self, nd: Node) -> list[Chunk]:
        if nd.a + nd.b > self._n[0]:
            raise FormatError("compact index: chunk range out of range")
        start = self._chunks + nd.a * CHUNK.size
        return [
            Chunk(fo, size, bo, be, self._digest(dg), inner)
            for fo, bo, be, size, inner, dg, _ in CHUNK.iter_unpack(self._buf[start : start + nd.b * CHUNK.size])
        ]

    def link(self, nd: Node) -> bytes:
        return self.string(nd.a, nd.b)

    def _entry(self, i: int, name: str | None = None) -> Entry:
        nd = self.node(i)
        t = TYPES[nd.type]
        dev = self.dev(nd)
        return Entry(
            name=self.path(i) if name is None else name,
            type=t,
            mode=nd.mode,
            uid=nd.uid,
            gid=nd.gid,
            uname=self._atom(nd.uname),
            gname=self._atom(nd.gname),
            size=nd.size,
            mtime_ns=nd.mtime_s * 1_000_000_000 + nd.mtime_ns,
            link_name=self.link(nd).decode("utf-8", "surrogateescape")
            if t in (EntryType.SYMLINK, EntryType.HARDLINK)
            else "",
            dev_major=dev[0],
            dev_minor=dev[1],
            xattrs=self.xattrs(nd) or NO_XATTRS,
            digest=self._digest(nd.digest),
            chunks=self.chunks(nd) if t == EntryType.REG else [],
            nlink=nd.nlink,
            implicit=bool(nd.flags & IMPLICIT),
        )

    def chunks_by_blob(self) -> Iterator[tuple[Entry, Chunk]]:
        """Every regular file's chunks in blob order, read as they are consumed (a background
        fetch of a 100k-file layer holds a few entries, not all of them)."""
        n_chunks = self._n[0]
        for k in range(n_chunks):
            j = self._u32(self._chunk_order, k, n_chunks)
            if j >= n_chunks:
                raise FormatError("compact index: chunk order out of range")
            node = CHUNK.unpack_from(self._buf, self._chunks + j * CHUNK.size)[6]
            e = self.entry(node)
            first = self.node(node).a
            if not 0 <= j - first < len(e.chunks):
                raise FormatError("compact index: a chunk's file does not list it")
            yield e, e.chunks[j - first]

    def digests(self) -> set[str]:
        n = self._n[1]
        raw = self._buf[self._digests : self._digests + n * DIGEST_SIZE]
        return {"sha256:" + raw[k : k + DIGEST_SIZE].hex() for k in range(0, len(raw), DIGEST_SIZE)}

    # -- directories ---------------------------------------------------------------------------
    def child(self, i: int, name: bytes) -> int | None:
        """The node named *name* directly under directory node *i* (bisect over sorted names)."""
        nd = self.node(i)
        if nd.type != TYPE_CODE[EntryType.DIR]:
            return None
        n_kids = self._n[4]
        lo, hi = nd.a, nd.a + nd.b
        if hi > n_kids:
            raise FormatError("compact index: children out of range")
        while lo < hi:
            mid = (lo + hi) // 2
            if self.base_name(self._u32(self._kids_sorted, mid, n_kids)) < name:
                lo = mid + 1
            else:
                hi = mid
        if lo < nd.a + nd.b:
            k = self._u32(self._kids_sorted, lo, n_kids)
            if self.base_name(k) == name:
                return k
        return None

    def find(self, path: str) -> int | None:
        """The node at *path*, or None."""
        i = 0
        norm = normalize(path)
        for part in norm.split("/") if norm else ():
            k = self.child(i, _enc(part))
            if k is None:
                return None
            i = k
        return i

    def child_nodes(self, i: int) -> list[int]:
        nd = self.node(i)
        if nd.type != TYPE_CODE[EntryType.DIR]:
            return []
        n_kids = self._n[4]
        return [self._u32(self._kids, k, n_kids) for k in range(nd.a, nd.a + nd.b)]

    def dirent(self, k: int) -> tuple[bytes, int]:
        """(presented name, inode number) of directory entry *k* of the overlay view."""
        if k >= self.n_dirents:
            raise FormatError("compact index: directory entry out of range")
        off, n, ino = DIRENT.unpack_from(self._buf, self._dirents + k * DIRENT.size)
        return self.string(off, n), ino

    def dirents(self, nd: Node) -> list[tuple[bytes, int]]:
        """(presented name, inode number) of directory *nd*'s entries, in readdir order."""
        if nd.c + nd.d > self.n_dirents:
            raise FormatError("compact index: directory entries out of range")
        order = struct.unpack_from(f"<{nd.d}I", self._buf, self._readdir_order + 4 * nd.c)
        return [self.dirent(k) for k in order]

    def iter_dirents(self, nd: Node) -> Iterator[tuple[bytes, int]]:
        """:meth:`dirents` one at a time: listing a directory of hundreds of thousands of
        entries makes no list of them (a transient peak of Python objects that the heap keeps)."""
        if nd.c + nd.d > self.n_dirents:
            raise FormatError("compact index: directory entries out of range")
        start = self._readdir_order + 4 * nd.c
        order = self._buf[start : start + 4 * nd.d]  # (a copy: a mapping is not held by a listing)
        for (k,) in U32.iter_unpack(order):
            yield self.dirent(k)

    def find_dirent(self, nd: Node, name: bytes) -> int | None:
        """The inode named *name* in the overlay view of directory *nd* (bisect over its
        name-sorted entries: a handful of reads from the mapping)."""
        lo, hi = nd.c, nd.c + nd.d
        if hi > self.n_dirents:
            raise FormatError("compact index: directory entries out of range")
        buf, base, pool, pool_len = self._buf, self._dirents, self._strings, self._n[5]
        unpack, size = DIRENT.unpack_from, DIRENT.size
        while lo < hi:
            mid = (lo + hi) >> 1
            off: int
            n: int
            ino: int
            off, n, ino = unpack(buf, base + mid * size)
            if off + n > pool_len:
                raise FormatError("compact index: a name lies outside the pool")
            got = buf[pool + off : pool + off + n]
            if got < name:
                lo = mid + 1
            elif got == name:
                return ino
            else:
                hi = mid
        return None

    def node_of_inode(self, ino: int) -> int | None:
        """The node inode *ino* of the overlay view shows (None: no such inode)."""
        if not 0 < ino <= self.fs_inodes:
            return None
        i: int = U32.unpack_from(self._buf, self._inodes + 4 * (ino - 1))[0]
        if i == NONE:
            return None  # a hidden node's number: never shown
        if i >= self.n_nodes:
            raise FormatError("compact index: inode out of range")
        return i

    def attr_fields(self, i: int) -> tuple[int, ...]:
        """Node *i*'s raw record (what getattr needs, without building a Node)."""
        if not 0 <= i < self.n_nodes:
            raise FormatError(f"compact index: no node {i}")
        return NODE.unpack_from(self._buf, self._nodes + i * NODE.size)

    # -- LayerIndex -------------------------------------------------------------------------
    def lookup(self, path: str) -> Entry | None:
        i = self.find(path)
        return None if i is None else self.entry(i)

    def children(self, path: str) -> list[str]:
        i = self.find(path)
        if i is None:
            return []
        return [self.base_name(k).decode("utf-8", "surrogateescape") for k in self.child_nodes(i)]

    def entries(self) -> Iterator[Entry]:
        dirs: dict[int, str] = {}  # paths of the directories seen so far (parents come first)
        for i in range(self.n_nodes):
            if i == 0:
                name = ""
            else:
                parent = self.node(i).parent
                base = self.base_name(i).decode("utf-8", "surrogateescape")
                pp = dirs.get(parent)
                name = (f"{pp}/{base}" if pp else base) if pp is not None else self.path(i)
            e = self._entry(i, name)
            if e.type == EntryType.DIR:
                dirs[i] = name
            yield e

    def decode_chunk(self, chunk: Chunk, raw: bytes) -> bytes:
        return self._decoder(chunk, raw)

    def __len__(self) -> int:
        return self.n_nodes
