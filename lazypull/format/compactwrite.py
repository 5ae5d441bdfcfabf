"""Writing a compact layer index (:mod:`lazypull.format.compactindex`) from a validated
:class:`LayerIndex`: the records, the overlay view LayerFS presents, and the file."""

from __future__ import annotations

import array
import hashlib
import os
import re
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from lazypull.errors import FormatError
from lazypull.format.compactindex import (
    ATOM,
    CHUNK,
    COMPACT_FORMATS,
    DEV,
    DIRENT,
    FS_HIDDEN,
    FS_OPAQUE,
    HEADER,
    IMPLICIT,
    MAGIC,
    NODE,
    NONE,
    ROOT_PARENT,
    TYPE_CODE,
    U32,
    VERSION,
    XATTR,
    CompactIndex,
    Decoder,
    decoder_for,
)  # fmt: skip
from lazypull.format.index import Entry, EntryType, LayerIndex
from lazypull.format.overlayview import DirView, add_hardlinks, ino_of, view_dir
from lazypull.gcpause import collector_paused


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


Pace = Callable[[], None]
_PACE_EVERY = 127  # entries between calls of a pace function (about half a millisecond of work)

_SHA256S = re.compile(r"(?:sha256:[0-9a-f]{64})*")


Part: TypeAlias = "bytes | bytearray | array.array[int]"  # a piece of the file, written as is


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


def _no_pause() -> None:
    pass


def _serialized_parts(index: LayerIndex, key: bytes, pace: Pace | None = None) -> list[Part]:
    """The compact form of *index* in pieces (header first), so a file is written without
    joining them: the build's peak memory on top of the Python index stays small. *pace* is
    called every few hundred entries (a background build gives way to requests there)."""
    with collector_paused():
        return _serialize(index, key, pace or _no_pause)


def _u32_array(n: int = 0) -> array.array[int]:
    return array.array("I", bytes(4 * n))


def _le(a: array.array[int]) -> bytes | array.array[int]:
    """An array of u32 as stored (little endian)."""
    if sys.byteorder == "little":
        return a
    b = array.array("I", a)
    b.byteswap()
    return b


def _serialize(index: LayerIndex, key: bytes, pace: Pace) -> list[Part]:
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
    pack_chunk = CHUNK.pack
    kids = _u32_array()
    kids_sorted = _u32_array()
    parents = _u32_array(n_nodes)
    bases: list[bytes] = []  # per node: its name's bytes
    name_offs = _u32_array(n_nodes)
    slots = _u32_array(5 * n_nodes)  # per node: a, b, c, d, e
    REG, DIR, SYMLINK, HARDLINK = EntryType.REG, EntryType.DIR, EntryType.SYMLINK, EntryType.HARDLINK

    def atom(s: str) -> int:
        b = _enc(s)
        i = atoms[s] = len(atom_recs) // ATOM.size
        atom_recs.extend(ATOM.pack(len(pool.data), len(b)))
        pool.data += b  # not deduplicated by bytes: *atoms* already is, by name
        return i

    chunk_keys: list[tuple[int, int]] = []
    seen, pool_data = pool.seen, pool.data
    parents[0] = ROOT_PARENT
    for i, e in enumerate(entries):
        if i and not i & _PACE_EVERY:
            pace()
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
            slots[5 * i] = len(chunks) // CHUNK.size
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
            dir_kids = kids[first : first + n]
            kids_sorted.extend(sorted(dir_kids, key=bases.__getitem__) if n > 1 else dir_kids)
    if n_nodes > _PACE_EVERY:
        pace()
    flags, dirents, readdir_order, inodes = _presentation(entries, ids, bases, name_offs, slots, kids, pace)

    nodes = bytearray(NODE.size * n_nodes)
    pack = NODE.pack_into
    size = NODE.size
    for i, e in enumerate(entries):
        if i and not i & _PACE_EVERY:
            pace()
        xattr = NONE
        if e.xattrs:
            parts = [U32.pack(len(e.xattrs))]
            for k, v in e.xattrs.items():
                kb = _enc(k)
                parts += (XATTR.pack(len(kb), len(v)), kb, bytes(v))
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
    shown = sum(1 for f in flags if not f & FS_HIDDEN)
    del ids, bases, slots, parents, name_offs, flags
    if len(pool.data) >= NONE:
        raise FormatError("names and xattrs too large for the compact index")
    chunk_order = array.array("I", sorted(range(len(chunk_keys)), key=chunk_keys.__getitem__))
    del chunk_keys
    body: list[Part] = [
        nodes, chunks, _le(chunk_order), _raw_digests(digests), b"".join(DEV.pack(*d) for d in devs), atom_recs,
        _le(kids), _le(kids_sorted), dirents, _le(readdir_order), _le(inodes), pool.data,
    ]  # fmt: skip
    body_hash = hashlib.sha256()
    for part in body:
        body_hash.update(part)
    header = HEADER.pack(
        MAGIC, VERSION, HEADER.size, hashlib.sha256(key).digest(), body_hash.digest(),
        index.format.encode()[:16], index.blob_size, index.prefetch_end,
        n_nodes, len(chunks) // CHUNK.size, len(digests), len(devs), len(atom_recs) // ATOM.size, len(kids),
        len(dirents) // DIRENT.size, len(inodes), len(pool.data), shown, 0, 0,
    )  # fmt: skip
    return [header, *body]


def _presentation(
    entries: list[Entry],
    ids: dict[str, int],
    bases: list[bytes],
    name_offs: array.array[int],
    slots: array.array[int],
    kids: array.array[int],
    pace: Pace = _no_pause,
) -> tuple[bytearray, bytearray, array.array[int], array.array[int]]:
    """The overlay view of the layer (:mod:`lazypull.format.overlayview`): per node its FS
    flags, per directory its shown entries, and per inode (node + 1) its node."""
    flags = bytearray([FS_HIDDEN]) * len(entries)
    flags[0] = 0
    dirents = bytearray()  # per directory, sorted by name (lookups bisect them)
    readdir_order = _u32_array()  # per directory, its dirents in readdir order
    pack = DIRENT.pack

    def emit(d: int, v: DirView) -> None:
        ks = v.shown
        if not ks:
            return
        n = len(readdir_order)
        slots[5 * d + 2], slots[5 * d + 3], slots[5 * d + 4] = n, len(ks), v.nlink
        names = list(ks)  # readdir order
        by_name = sorted(range(len(names)), key=names.__getitem__)
        rank = [0] * len(names)
        targets = v.targets
        for r, k in enumerate(by_name):
            rank[k] = n + r
            name = names[k]
            src = ks[name]
            # The shown name is the end of the source's name (".wh." dropped from whiteouts).
            off = name_offs[src] + len(bases[src]) - len(name)
            dirents.extend(pack(off, len(name), ino_of(targets.get(src, src))))
        readdir_order.extend(rank)

    with_hardlinks: list[tuple[int, DirView]] = []  # shown once every node's flags are final
    DIR = EntryType.DIR
    for d, e in enumerate(entries):  # parents come first: a directory's flags are final here
        if d and not d & _PACE_EVERY:
            pace()
        if e.type is not DIR or flags[d] & FS_HIDDEN:
            continue
        first = slots[5 * d]
        v = view_dir(((k, bases[k], entries[k].type) for k in kids[first : first + slots[5 * d + 1]]), d == 0)
        for k, f in v.flags.items():
            flags[k] = f
        if v.opaque:
            flags[d] |= FS_OPAQUE
        if v.hardlinks:
            with_hardlinks.append((d, v))
        else:
            emit(d, v)

    def target(h: int) -> int | None:
        return ids.get(entries[h].link_name)

    def visible(node: int) -> bool:
        return not flags[node] & FS_HIDDEN

    for d, v in with_hardlinks:
        add_hardlinks(v, bases.__getitem__, target, visible)
        emit(d, v)
    inodes = array.array("I", (NONE if f & FS_HIDDEN else i for i, f in enumerate(flags)))
    return flags, dirents, readdir_order, inodes


def write_file(index: LayerIndex, path: Path, key: bytes = b"", pace: Pace | None = None) -> CompactIndex:
    """Write *index* compactly to *path* (0600, temp file + rename) and map it."""
    parts = _serialized_parts(index, key, pace)
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
    return CompactIndex.open(path, key, decoder=decoder_of(index), verify=False)


def compact_copy(index: LayerIndex) -> CompactIndex:
    """An in-memory compact copy of *index* (a SOCI index keeps decoding its chunks)."""
    return CompactIndex(serialize(index), decoder=decoder_of(index))


def decoder_of(index: LayerIndex) -> Decoder:
    """A decoder that does not keep *index* (and its Python objects) alive."""
    return decoder_for(index.format) if index.format in COMPACT_FORMATS else index.decode_chunk
