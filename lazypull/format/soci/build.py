"""Build a zTOC for a gzip layer in one sequential inflate.

The C inflate (:mod:`.zlibc`) stops at deflate block boundaries to take checkpoints
while its output streams straight into :mod:`tarfile`, which records every member's
header and data offset. A second read of the compressed file (page-cache hot) hashes
the spans.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from lazypull.errors import FormatError
from lazypull.format.soci.zinfo import Zinfo
from lazypull.format.soci.zlibc import RawStream, inflate_with_checkpoints
from lazypull.format.soci.ztoc import FileMetadata, Ztoc

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

DEFAULT_SPAN_SIZE = 4 << 20  # soci-snapshotter's default
BUILD_TOOL = "lazypull"

_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.CONTTYPE: "reg",
    tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink",
    tarfile.DIRTYPE: "dir",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


class _Pieces(io.RawIOBase):
    """A readable stream over an iterator of byte pieces (the inflater's output)."""

    def __init__(self, it: Iterator[bytes]) -> None:
        self._it = it
        self._buf = memoryview(b"")
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: WriteableBuffer) -> int:
        while not self._buf:
            piece = next(self._it, None)
            if piece is None:
                return 0
            self._buf = memoryview(piece)
        view = memoryview(b)
        n = min(len(view), len(self._buf))
        view[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self.pos += n
        return n

    def drain(self) -> None:
        self._buf = memoryview(b"")
        for piece in self._it:
            self.pos += len(piece)


def rfc3339(ti: tarfile.TarInfo) -> str:
    """Go's time.MarshalText of the member's mtime, in UTC (what soci's builder writes)."""
    text = ti.pax_headers.get("mtime")
    sec, _, frac = (text or str(int(ti.mtime))).partition(".")
    try:
        base = datetime.fromtimestamp(int(sec), UTC).strftime("%Y-%m-%dT%H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return ""
    frac = frac[:9].rstrip("0")
    return f"{base}.{frac}Z" if frac.isdigit() else f"{base}Z"


def _metadata(ti: tarfile.TarInfo) -> FileMetadata:
    typ = _TYPES.get(ti.type)
    if typ is None:
        raise FormatError(f"tar entry {ti.name[:200]!r} has unsupported type {ti.type!r}")
    return FileMetadata(
        name=ti.name,
        type=typ,
        uncompressed_offset=ti.offset_data,
        uncompressed_size=ti.size if typ == "reg" else 0,
        linkname=ti.linkname,
        mode=ti.mode,
        uid=ti.uid,
        gid=ti.gid,
        uname=ti.uname,
        gname=ti.gname,
        mod_time=rfc3339(ti),
        devmajor=ti.devmajor,
        devminor=ti.devminor,
        xattrs={k: v.encode("utf-8", "surrogateescape") for k, v in ti.pax_headers.items()},
    )


def build_ztoc(
    src: RawStream, span_size: int = DEFAULT_SPAN_SIZE, build_tool: str = BUILD_TOOL
) -> tuple[Ztoc, Zinfo, int]:
    """(zTOC without span digests, its checkpoints, compressed size) from a gzip stream.

    The caller hashes the spans (:func:`span_digests`) from a second read of the blob."""
    if span_size <= 0:
        raise FormatError(f"span size must be positive, got {span_size}")
    zinfo = Zinfo(span_size, [])
    pieces = _Pieces(inflate_with_checkpoints(src, span_size, lambda *p: zinfo.points.append(p)))
    files: list[FileMetadata] = []
    try:
        with tarfile.open(fileobj=io.BufferedReader(pieces, 1 << 16), mode="r|") as tf:
            for ti in tf:
                files.append(_metadata(ti))
        pieces.drain()
    except tarfile.TarError as e:
        raise FormatError(f"the layer is not a valid tar archive: {e}") from None
    ztoc = Ztoc(
        files=files,
        compressed_archive_size=0,
        uncompressed_archive_size=pieces.pos,
        span_digests=[],
        checkpoints=b"",
        build_tool_identifier=build_tool,
    )
    return ztoc, zinfo, pieces.pos


def span_digests(read_at: Callable[[int, int], bytes], blob_size: int, zinfo: Zinfo) -> list[str]:
    """sha256 of each span's compressed range, read with *read_at(offset, length)*."""
    out = []
    pts = zinfo.points
    for i, (cin, _cout, bits, _w) in enumerate(pts):
        start = cin - (1 if bits else 0)
        end = pts[i + 1][0] if i + 1 < len(pts) else blob_size
        h = hashlib.sha256()
        pos = start
        while pos < end:
            data = read_at(pos, min(8 << 20, end - pos))
            if not data:
                raise FormatError(f"layer blob ends at {pos}, before span {i} ends at {end}")
            h.update(data)
            pos += len(data)
        out.append("sha256:" + h.hexdigest())
    return out


def _finish(ztoc: Ztoc, zinfo: Zinfo, read_at: Callable[[int, int], bytes], size: int) -> Ztoc:
    ztoc.span_digests = span_digests(read_at, size, zinfo)
    ztoc.compressed_archive_size = size
    ztoc.checkpoints = zinfo.to_bytes()
    ztoc.max_span_id = len(zinfo.points) - 1
    return ztoc


def build_ztoc_file(path: str | os.PathLike[str], span_size: int = DEFAULT_SPAN_SIZE) -> Ztoc:
    """The complete zTOC of the gzip layer blob at *path*."""
    with open(path, "rb", buffering=0) as f:
        ztoc, zinfo, _ = build_ztoc(f, span_size)
        fd = f.fileno()
        return _finish(ztoc, zinfo, lambda off, n: os.pread(fd, n, off), os.fstat(fd).st_size)


def build_ztoc_bytes(blob: bytes, span_size: int = DEFAULT_SPAN_SIZE) -> Ztoc:
    """The complete zTOC of an in-memory gzip layer blob."""
    ztoc, zinfo, _ = build_ztoc(io.BytesIO(blob), span_size)
    return _finish(ztoc, zinfo, lambda off, n: blob[off : off + n], len(blob))
