"""A layer index as one immutable buffer (a file the layer server mmaps): ~0 B of Python
heap per entry, so a process serving hundreds of layers holds a small fixed amount each.

The validated :class:`~lazypull.format.estargz_reader.TOCIndex` is built as before, then
serialised here and dropped. Readers decode fixed-size records with ``struct.unpack_from``
and materialise small :class:`Entry`/:class:`Chunk` objects on demand (the last few are
kept, so a file being read keeps one Entry and its chunks keep their identity).

Layout (little endian): a header (magic, version, caller's key, SHA-256 of the body,
counts), then fixed-size sections: nodes (one per index entry, in :meth:`entries` order),
chunks (and their order in the blob), raw 32-byte digests, device numbers, owner names, per-directory children in TOC
order and sorted by name (lookups bisect), the overlay presentation's directory entries
sorted by name and their readdir order, and a string pool (names, link targets, xattrs).

The overlay presentation (what :class:`lazypull.fs.layer.LayerFS` shows: whiteouts as
0/0 char devices, opaque directories, hidden landmarks, hardlinks sharing one inode) is
computed once when writing. Inode numbers are node numbers + 1 (root: 1).

A file is bounds-checked when opened (section sizes against its length, and its body
against the SHA-256 in the header); anything off raises :class:`FormatError`, and the
caller rebuilds it from the TOC. Chunk bytes are still verified by ``decode_chunk``.
"""

from __future__ import annotations

import array
import gc
import hashlib
import mmap
import os
import re
import struct
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, NamedTuple, TypeVar

from lazypull.errors import FormatError
from lazypull.format.index import NO_XATTRS, Chunk, Entry, EntryType, LayerIndex, normalize
from lazypull.format.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from lazypull.format.whiteout import OPAQUE
from lazypull.format.whiteout import WHITEOUT_PREFIX as WHITEOUT

#: Formats whose index is kept compact (a SOCI index keeps its span state in Python).
COMPACT_FORMATS = frozenset({"estargz", "zstdchunked"})
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
_HIDDEN_AT_ROOT = frozenset({PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})

_HEADER = struct.Struct("<8sII32s32s16sQQ12I")
HEADER_SIZE = _HEADER.size
# type, flags, mode, parent, name_off, name_len, (pad), uname, gname, uid, gid, size,
# mtime_s, mtime_ns, nlink, xattr_off, dev, digest, a, b, c, d, e.
# a..e by type: REG a,b = chunk range; DIR a,b = children range, c,d = dirent range,
# e = nlink as presented (2 + subdirectories); SYMLINK/HARDLINK a,b = link target.
_NODE = struct.Struct("<BBHIIHHIIQQQqIIIIIIIIII")
_NODE_NAME = struct.Struct("<IH")  # name_off, name_len at offset 8 of a node
_CHUNK = struct.Struct("<QQQIIII")  # file_offset, blob_offset, blob_end, size, inner_offset, digest, node
_DEV = struct.Struct("<QQ")
_ATOM = struct.Struct("<II")  # offset, length of an owner name in the pool
_U32 = struct.Struct("<I")
_DIRENT = struct.Struct("<IHI")  # name_off, name_len, ino
_XATTR = struct.Struct("<II")  # key length, value length
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


# -- writing ---------------------------------------------------------------------------------
class _Pool:
    """The string pool, each distinct byte string stored once."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.seen: dict[bytes, int] = {}

    def add(self, b: bytes) -> int:
        off = self.seen.get(b)
        if off is None:
            off = self.seen[b] = len(self.data)
            self.data += b
        return off


_SHA256S = re.compile(r"(?:sha256:[0-9a-f]{64})*")


def _raw_digests(digests: dict[str, int]) -> bytes:
    """The digests (in id order) as 32 raw bytes each; FormatError unless all are sha256."""
    text = "".join(digests)
    if not _SHA256S.fullmatch(text) or len(text) != 71 * len(digests):
        bad = next(d for d in digests if not (len(d) == 71 and _SHA256S.fullmatch(d)))
        raise FormatError(f"digest {bad[:80]!r} cannot be stored in the compact index (not sha256)")
    return bytes.fromhex(text.replace("sha256:", ""))


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def serialize(index: LayerIndex, key: bytes = b"") -> bytes:
    """The compact form of *index* (any LayerIndex whose digests are sha256)."""
    return b"".join(_serialized_parts(index, key))


def _serialized_parts(index: LayerIndex, key: bytes) -> list[bytes | bytearray]:
    """The compact form of *index* in pieces (header first), so a file is written without
    joining them: the build's peak memory on top of the Python index stays small."""
    enabled = gc.isenabled()
    gc.disable()  # only short-lived, acyclic containers are made here: collections would cost a fifth
    try:
        return _serialize(index, key)
    finally:
        if enabled:
            gc.enable()


def _u32_array(n: int = 0) -> array.array[int]:
    return array.array("I", bytes(4 * n))


def _le(a: array.array[int]) -> bytes | array.array[int]:
    """An array of u32 as stored (little endian)."""
    if sys.byteorder == "little":
        return a
    b = array.array("I", a)
    b.byteswap()
    return b


def _serialize(index: LayerIndex, key: bytes) -> list[bytes | bytearray]:
    entries = list(index.entries())
    n_nodes = len(entries)
    ids = {e.name: i for i, e in enumerate(entries)}
    if len(ids) != n_nodes or entries[0].name != "":
        raise FormatError("index entries are not unique paths starting at the root")
    if n_nodes >= NONE:
        raise FormatError("too many index entries for the compact index")
    pool = _Pool()
    add = pool.add
    digests: dict[str, int] = {}
    devs: dict[tuple[int, int], int] = {}
    atoms: dict[str, int] = {}
    atom_recs = bytearray()
    chunks = bytearray()
    pack_chunk = _CHUNK.pack
    kids = _u32_array()
    kids_sorted = _u32_array()
    parents = _u32_array(n_nodes)
    bases: list[bytes] = []  # per node: its name's bytes
    name_offs = _u32_array(n_nodes)
    slots = _u32_array(5 * n_nodes)  # per node: a, b, c, d, e
    REG, DIR, SYMLINK, HARDLINK = EntryType.REG, EntryType.DIR, EntryType.SYMLINK, EntryType.HARDLINK

    def atom(s: str) -> int:
        b = _enc(s)
        i = atoms[s] = len(atom_recs) // _ATOM.size
        atom_recs.extend(_ATOM.pack(len(pool.data), len(b)))
        pool.data += b  # not deduplicated by bytes: *atoms* already is, by name
        return i

    chunk_keys: list[tuple[int, int]] = []
    seen, pool_data = pool.seen, pool.data
    parents[0] = ROOT_PARENT
    for i, e in enumerate(entries):
        parent_name, _, base = e.name.rpartition("/")
        b = base.encode("utf-8", "surrogateescape")
        if i:
            parents[i] = ids[parent_name]
        bases.append(b)
        off = seen.get(b)
        if off is None:
            off = seen[b] = len(pool_data)
            pool_data += b
        name_offs[i] = off
        t = e.type
        if t is REG:
            slots[5 * i] = len(chunks) // _CHUNK.size
            slots[5 * i + 1] = len(e.chunks)
            try:
                for c in e.chunks:
                    d = c.digest
                    di = digests.get(d)
                    if di is None:
                        di = digests[d] = len(digests)
                    chunks += pack_chunk(c.file_offset, c.blob_offset, c.blob_end, c.size, c.inner_offset, di, i)
                    chunk_keys.append((c.blob_offset, c.inner_offset))
            except struct.error as err:
                raise FormatError(f"{e.name[:200]!r}: chunk cannot be stored in the compact index: {err}") from None
        elif t is DIR:
            prefix = e.name + "/" if e.name else ""
            mine = [ids[prefix + k] for k in index.children(e.name)]
            slots[5 * i] = len(kids)
            slots[5 * i + 1] = len(mine)
            slots[5 * i + 4] = 2  # nlink as presented, until subdirectories are counted
            kids.extend(mine)
        elif t is SYMLINK or t is HARDLINK:
            b = _enc(e.link_name)
            slots[5 * i] = add(b)
            slots[5 * i + 1] = len(b)
    for i, e in enumerate(entries):
        if e.type is DIR:
            first, n = slots[5 * i], slots[5 * i + 1]
            mine = kids[first : first + n]
            kids_sorted.extend(sorted(mine, key=bases.__getitem__) if n > 1 else mine)
    flags, dirents, readdir_order, fs_inodes = _presentation(entries, ids, parents, bases, name_offs, slots)

    nodes = bytearray(_NODE.size * n_nodes)
    pack = _NODE.pack_into
    size = _NODE.size
    for i, e in enumerate(entries):
        xattr = NONE
        if e.xattrs:
            parts = [_U32.pack(len(e.xattrs))]
            for k, v in e.xattrs.items():
                kb = _enc(k)
                parts += (_XATTR.pack(len(kb), len(v)), kb, bytes(v))
            xattr = add(b"".join(parts))
        dev = NONE
        if e.dev_major or e.dev_minor:
            dev = devs.setdefault((e.dev_major, e.dev_minor), len(devs))
        sec, ns = divmod(e.mtime_ns, 1_000_000_000)
        d = e.digest
        di = NONE if not d else digests.get(d)
        if di is None:
            di = digests[d] = len(digests)
        un, gn = atoms.get(e.uname), atoms.get(e.gname)
        if un is None:
            un = atom(e.uname)
        if gn is None:
            gn = atom(e.gname)
        try:
            pack(
                nodes, i * size,
                TYPE_CODE[e.type], flags[i] | (IMPLICIT if e.implicit else 0), e.mode, parents[i],
                name_offs[i], len(bases[i]), 0, un, gn, e.uid, e.gid, e.size,
                sec, ns, e.nlink, xattr, dev, di, *slots[5 * i : 5 * i + 5],
            )  # fmt: skip
        except struct.error as err:
            raise FormatError(f"{e.name[:200]!r} cannot be stored in the compact index: {err}") from None
    del ids, bases, slots, parents, name_offs, flags
    if len(pool.data) >= NONE:
        raise FormatError("names and xattrs too large for the compact index")
    chunk_order = array.array("I", sorted(range(len(chunk_keys)), key=chunk_keys.__getitem__))
    del chunk_keys
    body: list[bytes | bytearray] = [
        nodes, chunks, _le(chunk_order), _raw_digests(digests), b"".join(_DEV.pack(*d) for d in devs), atom_recs,
        _le(kids), _le(kids_sorted), dirents, _le(readdir_order), pool.data,
    ]  # fmt: skip
    body_hash = hashlib.sha256()
    for part in body:
        body_hash.update(part)
    header = _HEADER.pack(
        MAGIC, VERSION, _HEADER.size, hashlib.sha256(key).digest(), body_hash.digest(),
        index.format.encode()[:16], index.blob_size, index.prefetch_end,
        n_nodes, len(chunks) // _CHUNK.size, len(digests), len(devs), len(atom_recs) // _ATOM.size, len(kids),
        len(dirents) // _DIRENT.size, fs_inodes, len(pool.data), 0, 0, 0,
    )  # fmt: skip
    return [header, *body]


def _presentation(
    entries: list[Entry],
    ids: dict[str, int],
    parents: array.array[int],
    bases: list[bytes],
    name_offs: array.array[int],
    slots: array.array[int],
) -> tuple[bytearray, bytearray, array.array[int], int]:
    """The overlay view of the layer: per node its FS flags, and per directory its entries.

    ``.wh.NAME`` becomes a whiteout device NAME; ``.wh..wh..opq`` makes its directory opaque;
    ".wh.X" beside X means X was removed below and recreated here (X wins, opaque if a dir);
    landmarks at the root are hidden; a hardlink is a second name of its target's inode."""
    flags = bytearray([FS_HIDDEN]) * len(entries)
    flags[0] = 0
    # dir node -> presented name -> the node that name comes from (a hardlink: its own node)
    kids: dict[int, dict[bytes, int]] = {}
    hardlinks: list[tuple[int, int]] = []
    targets: dict[int, int] = {}  # hardlink node -> the node it names
    wh, opq = _enc(WHITEOUT), _enc(OPAQUE)
    hidden_at_root = {_enc(n) for n in _HIDDEN_AT_ROOT}
    DIR, HARDLINK = EntryType.DIR, EntryType.HARDLINK
    for i in range(1, len(entries)):
        parent = parents[i]
        name = bases[i]
        if flags[parent] & FS_HIDDEN or (parent == 0 and name in hidden_at_root):
            continue
        if name == opq:
            flags[parent] |= FS_OPAQUE
            continue
        t = entries[i].type
        if t is HARDLINK:
            hardlinks.append((parent, i))
            continue
        whiteout = name.startswith(wh)
        if whiteout:
            name = name[len(wh) :]
        siblings = kids.get(parent)
        if siblings is None:
            siblings = kids[parent] = {}
        other = siblings.get(name)
        if other is not None and whiteout:
            if entries[other].type is DIR:
                flags[other] |= FS_OPAQUE
            continue
        f = FS_WHITEOUT if whiteout else 0
        if other is not None and flags[other] & FS_WHITEOUT and t is DIR:
            f |= FS_OPAQUE
        flags[i] = f
        siblings[name] = i
    for parent, i in hardlinks:
        target = ids.get(entries[i].link_name)
        if target is not None and not flags[target] & FS_HIDDEN:
            kids.setdefault(parent, {})[bases[i]] = i
            targets[i] = target
    dirents = bytearray()  # per directory, sorted by name (lookups bisect them)
    readdir_order = _u32_array()  # per directory, its dirents in readdir order
    pack = _DIRENT.pack
    n = 0
    for d, ks in kids.items():
        slots[5 * d + 2], slots[5 * d + 3] = n, len(ks)
        names = list(ks)  # readdir order
        by_name = sorted(range(len(names)), key=names.__getitem__)
        rank = [0] * len(names)
        subdirs = 0
        for r, k in enumerate(by_name):
            rank[k] = n + r
            name = names[k]
            src = ks[name]
            # The presented name is the end of the source's name (".wh." dropped from whiteouts).
            off = name_offs[src] + len(bases[src]) - len(name)
            dirents += pack(off, len(name), targets.get(src, src) + 1)
            if entries[src].type is DIR:
                subdirs += 1
        slots[5 * d + 4] = 2 + subdirs
        readdir_order.extend(rank)
        n += len(names)
    fs_inodes = len(flags) - flags.count(FS_HIDDEN)
    return flags, dirents, readdir_order, fs_inodes


def write_file(index: LayerIndex, path: Path, key: bytes = b"") -> CompactIndex:
    """Write *index* compactly to *path* (0600, temp file + rename) and map it."""
    parts = _serialized_parts(index, key)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-index-")
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    del parts
    return CompactIndex.open(path, key, decoder=_decoder_of(index), verify=False)


# -- reading ---------------------------------------------------------------------------------
def decoder_for(fmt: str) -> Decoder:
    """The chunk decoder of a format whose index was re-read from a file."""
    if fmt == "estargz":
        from lazypull.format.estargz_reader import GzipChunkDecoder

        return GzipChunkDecoder()
    if fmt == "zstdchunked":
        from lazypull.format.zstdchunked import ZstdChunkDecoder

        return ZstdChunkDecoder()
    raise FormatError(f"compact index of format {fmt!r}: no chunk decoder for it")


def _decoder_of(index: LayerIndex) -> Decoder:
    """A decoder that does not keep *index* (and its Python objects) alive."""
    return decoder_for(index.format) if index.format in COMPACT_FORMATS else index.decode_chunk


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

    def __init__(self, buf: bytes | mmap.mmap, *, decoder: Decoder | None = None) -> None:
        if len(buf) < _HEADER.size:
            raise FormatError(f"compact index is {len(buf)} bytes: truncated")
        h = _HEADER.unpack_from(buf, 0)
        magic, version, header_size, self.key_hash, self.body_hash, fmt = h[:6]
        if magic != MAGIC:
            raise FormatError("not a compact layer index (bad magic)")
        if version != VERSION or header_size != _HEADER.size:
            raise FormatError(f"compact index version {version}, expected {VERSION}")
        self.format = fmt.rstrip(b"\0").decode("ascii", "replace")
        self.blob_size, self.prefetch_end = h[6], h[7]
        (self.n_nodes, n_chunks, n_digests, n_devs, n_atoms, n_kids, self.n_dirents, self.fs_inodes, n_strings) = h[
            8:17
        ]
        sizes = (
            self.n_nodes * _NODE.size, n_chunks * _CHUNK.size, n_chunks * 4, n_digests * DIGEST_SIZE,
            n_devs * _DEV.size, n_atoms * _ATOM.size, n_kids * 4, n_kids * 4, self.n_dirents * _DIRENT.size,
            self.n_dirents * 4, n_strings,
        )  # fmt: skip
        offs = []
        pos = _HEADER.size
        for s in sizes:
            offs.append(pos)
            pos += s
        if pos != len(buf) or self.n_nodes == 0:
            raise FormatError(f"compact index is {len(buf)} bytes, its header describes {pos}: truncated or corrupt")
        (
            self._nodes, self._chunks, self._chunk_order, self._digests, self._devs, self._atoms,
            self._kids, self._kids_sorted, self._dirents, self._readdir_order, self._strings,
        ) = offs  # fmt: skip
        self._n = (n_chunks, n_digests, n_devs, n_atoms, n_kids, n_strings)
        self._buf = buf
        self._decoder = decoder or decoder_for(self.format)
        self._entries = _LRU(ENTRY_CACHE)
        self._paths = _LRU(PATH_CACHE)

    @classmethod
    def from_index(cls, index: LayerIndex) -> CompactIndex:
        """An in-memory compact copy of *index* (a SOCI index keeps decoding its chunks)."""
        return cls(serialize(index), decoder=_decoder_of(index))

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

    # -- records -----------------------------------------------------------------------
    def node(self, i: int) -> Node:
        if not 0 <= i < self.n_nodes:
            raise FormatError(f"compact index: no node {i}")
        nd = Node._make(_NODE.unpack_from(self._buf, self._nodes + i * _NODE.size))
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
        off, n = _NODE_NAME.unpack_from(self._buf, self._nodes + i * _NODE.size + 8)
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
        off, n = _ATOM.unpack_from(self._buf, self._atoms + i * _ATOM.size)
        return self.string(off, n).decode("utf-8", "surrogateescape")

    def dev(self, nd: Node) -> tuple[int, int]:
        if nd.dev == NONE:
            return 0, 0
        if nd.dev >= self._n[2]:
            raise FormatError("compact index: device number out of range")
        return _DEV.unpack_from(self._buf, self._devs + nd.dev * _DEV.size)  # type: ignore[return-value]

    def xattrs(self, nd: Node) -> dict[str, bytes]:
        if nd.xattr == NONE:
            return {}
        (count,) = _U32.unpack_from(self.string(nd.xattr, 4))
        out: dict[str, bytes] = {}
        pos = nd.xattr + 4
        for _ in range(count):
            kn, vn = _XATTR.unpack_from(self.string(pos, _XATTR.size))
            pos += _XATTR.size
            k = self.string(pos, kn).decode("utf-8", "surrogateescape")
            out[k] = self.string(pos + kn, vn)
            pos += kn + vn
        return out

    def _u32(self, base: int, i: int, n: int) -> int:
        if i >= n:
            raise FormatError("compact index: table index out of range")
        return _U32.unpack_from(self._buf, base + 4 * i)[0]

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
        start = self._chunks + nd.a * _CHUNK.size
        return [
            Chunk(fo, size, bo, be, self._digest(dg), inner)
            for fo, bo, be, size, inner, dg, _ in _CHUNK.iter_unpack(self._buf[start : start + nd.b * _CHUNK.size])
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
            node = _CHUNK.unpack_from(self._buf, self._chunks + j * _CHUNK.size)[6]
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
        i: int | None = 0
        norm = normalize(path)
        for part in norm.split("/") if norm else ():
            i = self.child(i, _enc(part))  # type: ignore[arg-type]
            if i is None:
                return None
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
        off, n, ino = _DIRENT.unpack_from(self._buf, self._dirents + k * _DIRENT.size)
        return self.string(off, n), ino

    def dirents(self, nd: Node) -> list[tuple[bytes, int]]:
        """(presented name, inode number) of directory *nd*'s entries, in readdir order."""
        if nd.c + nd.d > self.n_dirents:
            raise FormatError("compact index: directory entries out of range")
        order = struct.unpack_from(f"<{nd.d}I", self._buf, self._readdir_order + 4 * nd.c)
        return [self.dirent(k) for k in order]

    def find_dirent(self, nd: Node, name: bytes) -> int | None:
        """The inode named *name* in the overlay view of directory *nd* (bisect over its
        name-sorted entries: a handful of reads from the mapping)."""
        lo, hi = nd.c, nd.c + nd.d
        if hi > self.n_dirents:
            raise FormatError("compact index: directory entries out of range")
        buf, base, pool, pool_len = self._buf, self._dirents, self._strings, self._n[5]
        unpack, size = _DIRENT.unpack_from, _DIRENT.size
        while lo < hi:
            mid = (lo + hi) >> 1
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

    def attr_fields(self, i: int) -> tuple[int, ...]:
        """Node *i*'s raw record (what getattr needs, without building a Node)."""
        if not 0 <= i < self.n_nodes:
            raise FormatError(f"compact index: no node {i}")
        return _NODE.unpack_from(self._buf, self._nodes + i * _NODE.size)

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
