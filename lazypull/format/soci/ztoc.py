"""The zTOC: soci-snapshotter's flatbuffers table of contents of one gzip layer.

Schema (soci-snapshotter ``ztoc/fbs/ztoc.fbs``, root ``Ztoc``), field slots in order:

- ``Ztoc``: version, build_tool_identifier, compressed_archive_size (long),
  uncompressed_archive_size (long), toc (``TOC``), compression_info (``CompressionInfo``)
- ``TOC``: metadata ([``FileMetadata``])
- ``FileMetadata``: name, type, uncompressed_offset (long), uncompressed_size (long),
  linkname, mode (long), uid (uint), gid (uint), uname, gname, mod_time (RFC 3339),
  devmajor (long), devminor (long), xattrs ([``Xattr``]: key, value; the tar's PAX records)
- ``CompressionInfo``: compression_algorithm (byte, Gzip = 1 default), max_span_id (int),
  span_digests ([string]), checkpoints ([ubyte], see :mod:`.zinfo`)

Encoding uses the ``flatbuffers`` runtime's builder; decoding is a small reader written
against the wire format (vtables, offsets) that bounds-checks every access, because a
zTOC comes from the registry and the runtime's generated accessors trust their input.
Bytes after the root (soci appends prefetch metadata there) are ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lazypull.errors import FormatError

if TYPE_CHECKING:
    import flatbuffers

ZTOC_VERSION = "0.9"
GZIP = 1
UNCOMPRESSED = 2


@dataclass(slots=True)
class FileMetadata:
    name: str
    type: str
    uncompressed_offset: int = 0
    uncompressed_size: int = 0
    linkname: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mod_time: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)  # PAX records, values as raw bytes


@dataclass
class Ztoc:
    files: list[FileMetadata]
    compressed_archive_size: int
    uncompressed_archive_size: int
    span_digests: list[str]
    checkpoints: bytes
    max_span_id: int = -1
    version: str = ZTOC_VERSION
    build_tool_identifier: str = ""
    compression_algorithm: int = GZIP

    def __post_init__(self) -> None:
        if self.max_span_id < 0:
            self.max_span_id = len(self.span_digests) - 1

    # -- encoding ---------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        # Imported here: only writers need it, and it loads numpy when numpy is installed
        # (15 MB in each long-lived process that only reads zTOCs).
        import flatbuffers

        b = flatbuffers.Builder(1024 + len(self.checkpoints) + 200 * len(self.files))
        version = b.CreateString(self.version)
        tool = b.CreateString(self.build_tool_identifier)
        metas = [_encode_file(b, f) for f in self.files]
        toc_vec = _offset_vector(b, metas)
        b.StartObject(1)
        b.PrependUOffsetTRelativeSlot(0, toc_vec, 0)
        toc = b.EndObject()
        checkpoints = b.CreateByteVector(self.checkpoints)
        digests = _offset_vector(b, [b.CreateString(d) for d in self.span_digests])
        b.StartObject(4)
        b.PrependInt8Slot(0, self.compression_algorithm, GZIP)
        b.PrependInt32Slot(1, self.max_span_id, 0)
        b.PrependUOffsetTRelativeSlot(2, digests, 0)
        b.PrependUOffsetTRelativeSlot(3, checkpoints, 0)
        info = b.EndObject()
        b.StartObject(6)
        b.PrependUOffsetTRelativeSlot(0, version, 0)
        b.PrependUOffsetTRelativeSlot(1, tool, 0)
        b.PrependInt64Slot(2, self.compressed_archive_size, 0)
        b.PrependInt64Slot(3, self.uncompressed_archive_size, 0)
        b.PrependUOffsetTRelativeSlot(4, toc, 0)
        b.PrependUOffsetTRelativeSlot(5, info, 0)
        root = b.EndObject()
        b.Finish(root)
        return bytes(b.Output())

    # -- decoding ---------------------------------------------------------------------
    @staticmethod
    def count_files(data: bytes) -> int:
        """How many files a zTOC lists, read without decoding them (to budget their memory)."""
        try:
            r = _Reader(data)
            toc_p = r.field(r.table(r.deref(0)), 4)
            return r.vector_at(r.table(r.deref(toc_p)), 0)[1] if toc_p else 0
        except (struct.error, IndexError, ValueError) as e:
            raise FormatError(f"zTOC is not a valid flatbuffer: {e}") from None

    @classmethod
    def parse(cls, data: bytes) -> Ztoc:
        try:
            return _decode(data)
        except (struct.error, IndexError, ValueError, UnicodeDecodeError) as e:
            raise FormatError(f"zTOC is not a valid flatbuffer: {e}") from None


def _offset_vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for o in reversed(offsets):
        b.PrependUOffsetTRelative(o)
    end: int = b.EndVector()
    return end


def _encode_file(b: flatbuffers.Builder, f: FileMetadata) -> int:
    name, typ, link = b.CreateString(f.name), b.CreateString(f.type), b.CreateString(f.linkname)
    uname, gname, mtime = b.CreateString(f.uname), b.CreateString(f.gname), b.CreateString(f.mod_time)
    xs = []
    for k in sorted(f.xattrs):
        ko, vo = b.CreateString(k), b.CreateString(f.xattrs[k])
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(0, ko, 0)
        b.PrependUOffsetTRelativeSlot(1, vo, 0)
        xs.append(b.EndObject())
    xattrs = _offset_vector(b, xs)
    b.StartObject(14)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(1, typ, 0)
    b.PrependInt64Slot(2, f.uncompressed_offset, 0)
    b.PrependInt64Slot(3, f.uncompressed_size, 0)
    b.PrependUOffsetTRelativeSlot(4, link, 0)
    b.PrependInt64Slot(5, f.mode, 0)
    b.PrependUint32Slot(6, f.uid, 0)
    b.PrependUint32Slot(7, f.gid, 0)
    b.PrependUOffsetTRelativeSlot(8, uname, 0)
    b.PrependUOffsetTRelativeSlot(9, gname, 0)
    b.PrependUOffsetTRelativeSlot(10, mtime, 0)
    b.PrependInt64Slot(11, f.devmajor, 0)
    b.PrependInt64Slot(12, f.devminor, 0)
    b.PrependUOffsetTRelativeSlot(13, xattrs, 0)
    obj: int = b.EndObject()
    return obj


class _Reader:
    """Bounds-checked access to flatbuffer tables in *buf*."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.n = len(buf)

    def table(self, pos: int) -> tuple[int, int, int]:
        """(table position, vtable position, vtable size)."""
        if not 0 <= pos <= self.n - 4:
            raise ValueError(f"table offset {pos} outside the buffer")
        vt = pos - struct.unpack_from("<i", self.buf, pos)[0]
        if not 0 <= vt <= self.n - 4:
            raise ValueError(f"vtable offset {vt} outside the buffer")
        vtsize = struct.unpack_from("<H", self.buf, vt)[0]
        if vtsize < 4 or vt + vtsize > self.n:
            raise ValueError("vtable size outside the buffer")
        return pos, vt, vtsize

    def field(self, t: tuple[int, int, int], slot: int) -> int:
        """Absolute position of a present field, or 0."""
        pos, vt, vtsize = t
        voff = 4 + 2 * slot
        if voff + 2 > vtsize:
            return 0
        o = struct.unpack_from("<H", self.buf, vt + voff)[0]
        return pos + o if o else 0

    def scalar(self, t: tuple[int, int, int], slot: int, fmt: str, default: int = 0) -> int:
        p = self.field(t, slot)
        return struct.unpack_from(fmt, self.buf, p)[0] if p else default

    def deref(self, p: int) -> int:
        rel: int = struct.unpack_from("<I", self.buf, p)[0]
        return p + rel

    def bytes_(self, t: tuple[int, int, int], slot: int) -> bytes:
        p = self.field(t, slot)
        if not p:
            return b""
        s = self.deref(p)
        n = struct.unpack_from("<I", self.buf, s)[0]
        if s + 4 + n > self.n:
            raise ValueError("string or byte vector runs past the buffer")
        return self.buf[s + 4 : s + 4 + n]

    def string(self, t: tuple[int, int, int], slot: int) -> str:
        return self.bytes_(t, slot).decode("utf-8", "surrogateescape")

    def vector(self, t: tuple[int, int, int], slot: int) -> list[int]:
        """Positions of the offset elements of a vector of tables/strings."""
        s, n = self.vector_at(t, slot)
        return [s + 4 + 4 * i for i in range(n)]

    def vector_at(self, t: tuple[int, int, int], slot: int) -> tuple[int, int]:
        """(position, length) of a vector; (0, 0) if absent."""
        p = self.field(t, slot)
        if not p:
            return 0, 0
        s = self.deref(p)
        n = struct.unpack_from("<I", self.buf, s)[0]
        if s + 4 + 4 * n > self.n:
            raise ValueError(f"vector of {n} elements runs past the buffer")
        return s, n

    def string_at(self, p: int) -> bytes:
        s = self.deref(p)
        n = struct.unpack_from("<I", self.buf, s)[0]
        if s + 4 + n > self.n:
            raise ValueError("string runs past the buffer")
        return self.buf[s + 4 : s + 4 + n]


_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")


def _str(buf: bytes, n: int, field: int) -> str:
    if not field:
        return ""
    s = field + _U32.unpack_from(buf, field)[0]
    size = _U32.unpack_from(buf, s)[0]
    if s + 4 + size > n:
        raise ValueError("string runs past the buffer")
    return buf[s + 4 : s + 4 + size].decode("utf-8", "surrogateescape")


def _file(r: _Reader, pos: int) -> FileMetadata:
    """One FileMetadata table (the bulk of a zTOC): the vtable read once, fields inline."""
    buf, n = r.buf, r.n
    t = r.table(pos)
    count = min((t[2] - 4) // 2, 14)
    offs = struct.unpack_from(f"<{count}H", buf, t[1] + 4) + (0,) * (14 - count)
    f = [pos + o if o else 0 for o in offs]
    xattrs: dict[str, bytes] = {}
    for xp in r.vector(t, 13):
        x = r.table(r.deref(xp))
        xattrs[r.string(x, 0)] = r.bytes_(x, 1)
    return FileMetadata(
        _str(buf, n, f[0]),
        _str(buf, n, f[1]),
        _I64.unpack_from(buf, f[2])[0] if f[2] else 0,
        _I64.unpack_from(buf, f[3])[0] if f[3] else 0,
        _str(buf, n, f[4]),
        _I64.unpack_from(buf, f[5])[0] if f[5] else 0,
        _U32.unpack_from(buf, f[6])[0] if f[6] else 0,
        _U32.unpack_from(buf, f[7])[0] if f[7] else 0,
        _str(buf, n, f[8]),
        _str(buf, n, f[9]),
        _str(buf, n, f[10]),
        _I64.unpack_from(buf, f[11])[0] if f[11] else 0,
        _I64.unpack_from(buf, f[12])[0] if f[12] else 0,
        xattrs,
    )


def _decode(data: bytes) -> Ztoc:
    r = _Reader(bytes(data))
    root = r.table(r.deref(0))
    toc_p = r.field(root, 4)
    info_p = r.field(root, 5)
    if not toc_p or not info_p:
        raise ValueError("zTOC has no TOC or no compression info")
    toc = r.table(r.deref(toc_p))
    files = [_file(r, r.deref(p)) for p in r.vector(toc, 0)]
    info = r.table(r.deref(info_p))
    return Ztoc(
        files=files,
        compressed_archive_size=r.scalar(root, 2, "<q"),
        uncompressed_archive_size=r.scalar(root, 3, "<q"),
        span_digests=[r.string_at(p).decode("ascii") for p in r.vector(info, 2)],
        checkpoints=r.bytes_(info, 3),
        max_span_id=r.scalar(info, 1, "<i"),
        version=r.string(root, 0),
        build_tool_identifier=r.string(root, 1),
        compression_algorithm=r.scalar(info, 0, "<b", GZIP),
    )
