"""Build eStargz blobs from tar layers.

Output layout (see the eStargz spec): tar headers and payloads in gzip members, a new
member at the start of every non-empty regular file payload and of every chunk, the
TOC as the last tar entry in its own member, then the 51-byte footer. Members are
independent, so they are compressed on a thread pool (zlib releases the GIL) and
written in order; memory stays bounded by the number of members in flight.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

from lazypull.errors import FormatError
from lazypull.format.footer import estargz_footer
from lazypull.format.gzipmember import compress_member
from lazypull.format.index import normalize
from lazypull.format.lastwins import LastWins
from lazypull.format.tarstream import Prioritized, is_landmark_mark, iter_members
from lazypull.format.toc import (
    LANDMARK_CONTENTS,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC,
    TOC_TAR_NAME,
    EntryTypeName,
    TOCEntry,
    format_modtime,
)

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 4 << 20
DEFAULT_COMPRESSION_LEVEL = 9
BLOCK = 512
_EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"").hexdigest()

_TYPES: dict[bytes, EntryTypeName] = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.CONTTYPE: "reg",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


class HardlinkOutsideLayerError(FormatError):
    """Hardlinks to files the layer does not hold (legal: they name files of a lower layer)."""

    def __init__(self, targets: set[str]) -> None:
        self.targets = targets
        shown = ", ".join(sorted(targets)[:3]) + (" ..." if len(targets) > 3 else "")
        super().__init__(f"layer has hardlinks to files of a lower layer ({shown})")


@dataclass(frozen=True)
class BuildResult:
    blob_digest: str  # sha256 of the compressed blob (the layer descriptor's digest)
    blob_size: int
    toc_digest: str  # sha256 of the TOC JSON (the toc.digest annotation)
    diff_id: str  # sha256 of the uncompressed blob (config rootfs.diff_ids)
    uncompressed_size: int  # io.containers.estargz.uncompressed-size
    annotations: dict[str, str] = field(default_factory=dict)  # format-specific layer annotations


def tar_header(ti: tarfile.TarInfo) -> bytes:
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def toc_entry_for(ti: tarfile.TarInfo) -> TOCEntry:
    typ = _TYPES.get(ti.type)
    if typ is None:
        raise FormatError(f"{ti.name}: unsupported tar entry type {ti.type!r}")
    name = ti.name + "/" if typ == "dir" and not ti.name.endswith("/") else ti.name
    e = TOCEntry(
        name=name,
        type=typ,
        modtime=format_modtime(ti.mtime),
        mode=ti.mode,
        uid=ti.uid,
        gid=ti.gid,
        uname=ti.uname,
        gname=ti.gname,
        xattrs={
            k[len("SCHILY.xattr.") :]: v.encode("utf-8", "surrogateescape")
            for k, v in ti.pax_headers.items()
            if k.startswith("SCHILY.xattr.")
        },
    )
    if typ == "reg":
        e.size = ti.size
    if typ in ("symlink", "hardlink"):
        e.link_name = ti.linkname
    if typ in ("char", "block"):
        e.dev_major, e.dev_minor = ti.devmajor, ti.devminor
    return e


def _landmark(name: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = len(LANDMARK_CONTENTS)
    ti.mode = 0
    ti.mtime = 0
    return ti


class _MemberWriter:
    """Compresses segments on a pool, writes them in order, tracks offsets and digests."""

    def __init__(self, out: BinaryIO, level: int, workers: int, compress: Callable[[bytes, int], bytes]) -> None:
        self.out = out
        self.level = level
        self.compress = compress
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="estargz-gz")
        self.pending: deque[tuple[int, bytes, Future[bytes]]] = deque()
        self.max_pending = workers * 4
        self.offsets: list[int] = []  # segment index -> blob offset
        self.pos = 0
        self.blob_hash = hashlib.sha256()
        self.diff_hash = hashlib.sha256()
        self.uncompressed = 0

    def submit(self, data: bytes) -> int:
        """Queue one gzip member; returns its segment index."""
        idx = len(self.offsets) + len(self.pending)
        self.pending.append((idx, data, self.pool.submit(self.compress, data, self.level)))
        while len(self.pending) > self.max_pending:
            self._drain_one()
        return idx

    def _drain_one(self) -> None:
        _idx, data, fut = self.pending.popleft()
        comp = fut.result()
        self.offsets.append(self.pos)
        self._write(comp)
        self.diff_hash.update(data)
        self.uncompressed += len(data)

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.blob_hash.update(data)
        self.pos += len(data)

    def flush(self) -> None:
        while self.pending:
            self._drain_one()

    def write_raw(self, data: bytes) -> None:
        self.flush()
        self._write(data)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def result(self, toc_json: bytes, annotations: dict[str, str] | None = None) -> BuildResult:
        """The ids of everything written so far (call after the footer)."""
        return BuildResult(
            blob_digest="sha256:" + self.blob_hash.hexdigest(),
            blob_size=self.pos,
            toc_digest="sha256:" + hashlib.sha256(toc_json).hexdigest(),
            diff_id="sha256:" + self.diff_hash.hexdigest(),
            uncompressed_size=self.uncompressed,
            annotations=annotations or {},
        )


def build_estargz(
    src: BinaryIO,
    out: BinaryIO,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compression_level: int = DEFAULT_COMPRESSION_LEVEL,
    prioritized_files: Prioritized | None = None,
    workers: int | None = None,
) -> BuildResult:
    """Convert a tar or tar.gz stream into an eStargz blob written to *out*."""
    if not 0 <= compression_level <= 9:
        raise FormatError(f"gzip compression level must be 0-9, got {compression_level}")
    return build_layer(
        src,
        out,
        compress_member,
        _finish,
        chunk_size=chunk_size,
        compression_level=compression_level,
        prioritized_files=prioritized_files,
        workers=workers,
    )


# Writes the TOC and footer after the last member; returns the build result.
Finisher = Callable[["_MemberWriter", TOC, int], BuildResult]


def build_layer(
    src: BinaryIO,
    out: BinaryIO,
    compress: Callable[[bytes, int], bytes],
    finish: Finisher,
    *,
    chunk_size: int,
    compression_level: int,
    prioritized_files: Prioritized | None,
    workers: int | None,
) -> BuildResult:
    """The layout shared by eStargz and zstd:chunked; *compress* makes one independent frame."""
    if chunk_size <= 0:
        raise FormatError(f"chunk size must be positive, got {chunk_size}")
    mw = _MemberWriter(out, compression_level, workers or os.cpu_count() or 2, compress)
    try:
        toc = _write_entries(src, mw, chunk_size, prioritized_files)
        return finish(mw, toc, compression_level)
    finally:
        mw.close()


# (TOC entry, segment index) pairs whose offsets are filled in after writing.
_Fixups = list[tuple[TOCEntry, int]]


def _merge_dir(earlier: list[TOCEntry], later: list[TOCEntry]) -> None:
    """A directory listed again: the later entry's metadata, the earlier entry's place."""
    a, b = earlier[0], later[0]
    a.modtime, a.mode, a.uid, a.gid = b.modtime, b.mode, b.uid, b.gid
    a.uname, a.gname, a.xattrs = b.uname, b.gname, b.xattrs


def _rename(group: list[TOCEntry], name: str, as_file: bool) -> None:
    if as_file:
        for e in group:  # the file entry and its chunk entries
            e.name = name
    else:
        group[0].link_name = name


def _write_entries(src: BinaryIO, mw: _MemberWriter, chunk_size: int, prioritized: Prioritized | None) -> TOC:
    members, moved = iter_members(src, prioritized)
    names: LastWins[list[TOCEntry]] = LastWins(_merge_dir, _rename)
    fixups: _Fixups = []
    cur = bytearray()

    def add(ti: tarfile.TarInfo, payload: BinaryIO | None, data: bytes | None = None) -> None:
        nonlocal cur
        e = toc_entry_for(ti)
        group = [e]
        names.add(normalize(e.name), e.type, normalize(e.link_name) if e.type == "hardlink" else "", group)
        cur += tar_header(ti)
        if e.type == "reg" and ti.size == 0:
            e.digest = _EMPTY_DIGEST  # the reference records it for empty files too
        if e.type != "reg" or ti.size == 0:
            return
        file_hash = hashlib.sha256()
        written = 0
        entry = e
        while written < ti.size:
            n = min(chunk_size, ti.size - written)
            buf = data[written : written + n] if data is not None else _read_exact(payload, n, ti.name)
            file_hash.update(buf)
            mw.submit(bytes(cur))
            cur = bytearray(buf)
            seg = len(mw.offsets) + len(mw.pending)  # index the next submit will get
            entry.chunk_offset = written
            entry.chunk_size = n if written + n < ti.size else 0
            entry.chunk_digest = "sha256:" + hashlib.sha256(buf).hexdigest()
            fixups.append((entry, seg))
            if entry is not e:
                group.append(entry)
            written += n
            entry = TOCEntry(name=e.name, type="chunk")
        e.digest = "sha256:" + file_hash.hexdigest()
        cur += padding(ti.size)

    if not prioritized or not moved:
        add(_landmark(NO_PREFETCH_LANDMARK), None, LANDMARK_CONTENTS)
    for m in members:
        if is_landmark_mark(m):
            if moved:
                add(_landmark(PREFETCH_LANDMARK), None, LANDMARK_CONTENTS)
            continue
        add(*m)
    if cur:
        mw.submit(bytes(cur))
    mw.flush()
    for entry, seg in fixups:
        entry.offset = mw.offsets[seg]
    if dangling := names.dangling_links():
        raise HardlinkOutsideLayerError(dangling)
    if names.replaced:
        # The blob keeps every entry (its tar stream extracts the same way); the TOC
        # lists what extraction leaves.
        log.info("source layer lists %d names more than once; the TOC keeps the last of each", names.replaced)
    return TOC(entries=[e for group in names.items() for e in group])


def _read_exact(f: BinaryIO | None, n: int, name: str) -> bytes:
    data = f.read(n) if f is not None else b""
    if len(data) != n:
        raise FormatError(f"{name}: source tar ends inside this file's content (truncated layer)")
    return data


def _finish(mw: _MemberWriter, toc: TOC, level: int) -> BuildResult:
    toc_json = toc.to_bytes()
    ti = tarfile.TarInfo(TOC_TAR_NAME)
    ti.size = len(toc_json)
    ti.mode = 0
    ti.mtime = 0
    toc_tar = tar_header(ti) + toc_json + padding(len(toc_json)) + b"\0" * (2 * BLOCK)
    toc_offset = mw.pos
    mw.submit(toc_tar)
    mw.flush()
    mw.write_raw(estargz_footer(toc_offset))
    return mw.result(toc_json)
