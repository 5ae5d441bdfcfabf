"""A :class:`LayerIndex` over an unmodified gzip layer and its zTOC.

Each regular file is split into chunks at span boundaries. A chunk's compressed range
is its whole span (the span digest covers exactly that range), its ``inner_offset`` is
where the chunk starts in the span's uncompressed output. :meth:`decode_chunk` checks
the span's sha256 before inflating anything, inflates the span from its checkpoint
(window + leftover bits) and keeps the last few inflated spans, so the many small files
of one span cost one inflate.

Chunk digests: a zTOC has digests of compressed spans only, while the chunk cache is
keyed by the digest of the bytes it holds. A chunk's digest therefore starts as a
stand-in made of its span number, offset and size, which no content can be found to hash
to (a cache miss) and becomes the sha256 of its bytes
once :meth:`decode_chunk` has verified them, so later reads and the shared cache use the
real content digest.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator

from lazypull.errors import DigestMismatchError, FormatError
from lazypull.format.estargz_reader import ChunkDecoder, TOCIndex
from lazypull.format.index import NO_XATTRS, Chunk, Entry, EntryType, normalize
from lazypull.format.soci.zinfo import Span, Zinfo
from lazypull.format.soci.zlibc import inflate_from
from lazypull.format.soci.ztoc import GZIP, FileMetadata, Ztoc
from lazypull.format.toc import EntryTypeName, TOCEntry

_TYPES: dict[str, EntryTypeName] = {
    "dir": "dir", "reg": "reg", "symlink": "symlink", "hardlink": "hardlink", "char": "char", "block": "block",
    "fifo": "fifo",
}  # fmt: skip
XATTR_PREFIX = "SCHILY.xattr."
_XLEN = len(XATTR_PREFIX)
MAX_FILES = 10_000_000


def _octal(field: bytes) -> int | None:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        return None


def check_tar_header(block: bytes, name: str, size: int) -> None:
    """The 512 bytes before a file's data must be that file's tar header: a zTOC cannot
    point one file at another file's (or no file's) bytes. The name is compared where
    the header holds it whole (long or non-ASCII names live in PAX/GNU records)."""
    what = f"zTOC entry {name[:200]!r}"
    if len(block) != 512:
        raise FormatError(f"{what}: no tar header before its data")
    stored = _octal(block[148:156])
    unsigned = sum(block[:148]) + 256 + sum(block[156:])
    signed = unsigned - 2 * (sum(b for b in block[:148] if b > 127) + sum(b for b in block[156:] if b > 127))
    if stored is None or stored not in (unsigned, signed):
        raise FormatError(f"{what}: the bytes before its data are not a tar header")
    if block[156:157] not in (b"0", b"\0", b"7"):
        raise FormatError(f"{what}: its tar header is not a regular file's")
    hsize = None if block[124] & 0x80 else _octal(block[124:136])
    if hsize is not None and hsize != size and size < 8**11:
        raise FormatError(f"{what}: its tar header says {hsize} bytes, the zTOC {size}")
    raw = block[0:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar" and block[345:500].strip(b"\0"):
        return  # split into prefix + name: compared no further
    comparable = 0 < len(raw) < 99 and raw.isascii() and b"?" not in raw
    if comparable and normalize(raw.decode()) != normalize(name):
        raise FormatError(f"{what}: the tar header before its data is {raw[:200]!r}'s")


class SpanDecoder(ChunkDecoder):
    """Verify a span against its digest, inflate it from its checkpoint, cut the chunk out;
    for a file's first chunk, check the tar header in front of it too (when in the span)."""

    def __init__(self, spans: dict[int, Span], keep: int = 4) -> None:
        self.spans = spans
        self.keep = keep
        self.headers: dict[tuple[int, int], tuple[str, int]] = {}  # first chunk -> (name, size)
        self._inflated: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def span_bytes(self, span: Span, raw: bytes) -> bytes:
        with self._lock:
            data = self._inflated.get(span.start)
            if data is not None:
                self._inflated.move_to_end(span.start)
                return data
        if len(raw) != span.end - span.start:
            raise FormatError(
                f"span at {span.start}: got {len(raw)} compressed bytes, expected {span.end - span.start}"
            )
        actual = "sha256:" + hashlib.sha256(raw).hexdigest()
        if actual != span.digest:
            raise DigestMismatchError(f"span at blob offset {span.start}", span.digest, actual)
        data = inflate_from(raw, span.bits, span.window, span.out_end - span.out_start)
        with self._lock:
            self._inflated[span.start] = data
            while len(self._inflated) > self.keep:
                self._inflated.popitem(last=False)
        return data

    def __call__(self, chunk: Chunk, raw: bytes) -> bytes:
        span = self.spans.get(chunk.blob_offset)
        if span is None:
            raise FormatError(f"no span starts at blob offset {chunk.blob_offset}")
        whole = self.span_bytes(span, raw)
        head = self.headers.get((chunk.blob_offset, chunk.inner_offset))
        if head is not None and chunk.inner_offset >= 512:
            check_tar_header(whole[chunk.inner_offset - 512 : chunk.inner_offset], *head)
        data = whole[chunk.inner_offset : chunk.inner_offset + chunk.size]
        if len(data) != chunk.size:
            raise FormatError(f"chunk at {chunk.inner_offset} of span {span.start} runs past the span")
        chunk.digest = "sha256:" + hashlib.sha256(data).hexdigest()
        return data


class SociIndex(TOCIndex):
    """The filesystem view of a gzip layer described by a zTOC."""

    def __init__(self, ztoc: Ztoc, blob_size: int) -> None:
        if ztoc.compression_algorithm != GZIP:
            raise FormatError(f"zTOC compression algorithm {ztoc.compression_algorithm} is not gzip")
        if ztoc.compressed_archive_size != blob_size:
            raise FormatError(f"zTOC is for a {ztoc.compressed_archive_size}-byte layer, the blob has {blob_size}")
        if len(ztoc.files) > MAX_FILES:
            raise FormatError(f"zTOC lists {len(ztoc.files)} files")
        if ztoc.max_span_id + 1 != len(ztoc.span_digests):
            raise FormatError(f"zTOC max span id {ztoc.max_span_id} does not match {len(ztoc.span_digests)} digests")
        zinfo = Zinfo.parse(ztoc.checkpoints)
        usize = ztoc.uncompressed_archive_size
        spans = zinfo.spans(blob_size, usize, ztoc.span_digests)
        self.spans = spans
        self._outs = [s.out_start for s in spans]
        decoder = SpanDecoder({s.start: s for s in spans})
        super().__init__(
            self._toc_entries(ztoc.files, usize),
            blob_size=blob_size,
            data_end=blob_size,
            fmt="soci",
            decoder=decoder,
        )
        self._by_span: dict[int, list[tuple[Entry, Chunk]]] = {}
        for e in self._entries.values():
            if e.chunks and e.type == EntryType.REG:
                c = e.chunks[0]
                decoder.headers[(c.blob_offset, c.inner_offset)] = (e.name, e.size)
                for c in e.chunks:
                    self._by_span.setdefault(c.blob_offset, []).append((e, c))

    def chunks_sharing(self, chunk: Chunk) -> list[tuple[Entry, Chunk]]:
        return [(e, c) for e, c in self._by_span.get(chunk.blob_offset, ()) if c is not chunk]

    def _toc_entries(self, files: list[FileMetadata], usize: int) -> Iterator[TOCEntry]:
        """The zTOC as eStargz TOC entries: one chunk per span a file's data touches."""
        spans, outs = self.spans, self._outs
        for f in sorted(files, key=lambda f: f.uncompressed_offset):
            typ = _TYPES.get(f.type)
            if typ is None:
                raise FormatError(f"zTOC entry {f.name[:200]!r} has unknown type {f.type[:20]!r}")
            size = f.uncompressed_size if typ == "reg" else 0
            off = f.uncompressed_offset
            if off < 0 or off % 512 or size < 0 or off + size > usize or f.mode < 0 or f.devmajor < 0 or f.devminor < 0:
                raise FormatError(f"zTOC entry {f.name[:200]!r} lies outside the layer (offset {off}, size {size})")
            xattrs = (
                {k[_XLEN:]: v for k, v in f.xattrs.items() if k.startswith(XATTR_PREFIX)} if f.xattrs else NO_XATTRS
            )
            name = f.name
            mtime = f.mod_time if not f.mod_time.startswith("0001-") else ""
            if typ != "reg" or size == 0:
                yield TOCEntry(
                    name, typ, size, mtime, f.linkname, f.mode, f.uid, f.gid, f.uname, f.gname,
                    f.devmajor, f.devminor, xattrs,
                )  # fmt: skip
                continue
            pos, end, first = off, off + size, True
            i = bisect.bisect_right(outs, pos) - 1
            while pos < end:
                if i < 0 or i >= len(spans) or pos >= spans[i].out_end:
                    raise FormatError(f"zTOC entry {name[:200]!r}: offset {pos} is in no span")
                span = spans[i]
                n = min(end, span.out_end) - pos
                inner = pos - span.out_start
                stand_in = f"sha256:{i:021x}{inner:021x}{n:022x}"  # no content hashes to this
                if first:
                    yield TOCEntry(
                        name, "reg", size, mtime, f.linkname, f.mode, f.uid, f.gid, f.uname, f.gname,
                        f.devmajor, f.devminor, xattrs, "", span.start, inner, 0, n, stand_in,
                    )  # fmt: skip
                    first = False
                else:
                    yield TOCEntry(
                        name=name, type="chunk", offset=span.start, inner_offset=inner,
                        chunk_offset=pos - off, chunk_size=n, chunk_digest=stand_in,
                    )  # fmt: skip
                pos += n
                i += 1

    def _fill_ends(self, offsets: list[int], data_end: int) -> None:
        ends = {s.start: s.end for s in self.spans}
        for e in self._entries.values():
            for c in e.chunks:
                c.blob_end = ends[c.blob_offset]


def open_soci(ztoc_bytes: bytes, blob_size: int) -> SociIndex:
    return SociIndex(Ztoc.parse(ztoc_bytes), blob_size)
