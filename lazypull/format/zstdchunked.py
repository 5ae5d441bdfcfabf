"""zstd:chunked layers: the eStargz layout with zstd frames instead of gzip members.

Written as stargz-snapshotter writes it: every payload/chunk starts a zstd frame, the
TOC (the eStargz TOC JSON) is zstd-compressed inside a skippable frame, and a skippable
frame at the end holds the 40-byte footer (TOC offset, compressed and uncompressed
length, manifest type 1, magic ``GnUlInUx``). containers/storage's variant, whose
footer payload is 64 bytes (adds tar-split fields), is read too.
"""

from __future__ import annotations

import hashlib
import io
import struct
from typing import BinaryIO

import zstandard

from lazypull.errors import DigestMismatchError, FormatError
from lazypull.format.estargz_reader import ChunkDecoder, TOCIndex, checked_toc_digest
from lazypull.format.estargz_writer import BuildResult, _MemberWriter, build_layer
from lazypull.format.limits import DEFAULT_LIMITS, ZSTD_MAX_RATIO, Limits
from lazypull.format.tarstream import Prioritized
from lazypull.format.toc import TOC, iter_entries
from lazypull.oci import mediatypes as mt
from lazypull.source import ReadAt

SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNKED_MAGIC = b"GnUlInUx"
FOOTER_SIZE = 40  # stargz-snapshotter's payload
STORAGE_FOOTER_SIZE = 64  # containers/storage's payload
MANIFEST_TYPE_CRFS = 1
DEFAULT_LEVEL = 3


def skippable_frame(payload: bytes) -> bytes:
    return SKIPPABLE_MAGIC + struct.pack("<I", len(payload)) + payload


def compress_frame(data: bytes, level: int) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def _finish(mw: _MemberWriter, toc: TOC, level: int) -> BuildResult:
    toc_json = toc.to_bytes()
    compressed = zstandard.ZstdCompressor(level=level).compress(toc_json)
    mw.flush()
    toc_offset = mw.pos + 8  # the compressed TOC starts after the skippable frame header
    mw.write_raw(skippable_frame(compressed))
    footer = struct.pack("<QQQQ", toc_offset, len(compressed), len(toc_json), MANIFEST_TYPE_CRFS) + CHUNKED_MAGIC
    mw.write_raw(skippable_frame(footer))
    return mw.result(
        toc_json,
        {
            mt.ANNOTATION_ZSTD_CHUNKED_MANIFEST_CHECKSUM: "sha256:" + hashlib.sha256(compressed).hexdigest(),
            mt.ANNOTATION_ZSTD_CHUNKED_MANIFEST_POSITION: f"{toc_offset}:{len(compressed)}:{len(toc_json)}:1",
        },
    )


def build_zstdchunked(
    src: BinaryIO,
    out: BinaryIO,
    *,
    chunk_size: int = 4 << 20,
    compression_level: int = DEFAULT_LEVEL,
    prioritized_files: Prioritized | None = None,
    workers: int | None = None,
) -> BuildResult:
    """Convert a tar stream into a zstd:chunked blob (stargz-snapshotter's variant)."""
    if not 1 <= compression_level <= 22:
        raise FormatError(f"zstd compression level must be 1-22, got {compression_level}")
    return build_layer(
        src,
        out,
        compress_frame,
        _finish,
        chunk_size=chunk_size,
        compression_level=compression_level,
        prioritized_files=prioritized_files,
        workers=workers,
    )


class ZstdChunkDecoder(ChunkDecoder):
    max_ratio = ZSTD_MAX_RATIO

    def inflate(self, raw: bytes, need: int, what: str) -> bytes:
        try:
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True) as r:
                data = r.read(need)
                while len(data) < need:
                    more = r.read(need - len(data))
                    if not more:
                        break
                    data += more
        except zstandard.ZstdError as e:
            raise FormatError(f"{what}: corrupt zstd data ({e})") from None
        if len(data) < need:
            raise FormatError(f"{what}: data ends after {len(data)} of {need} bytes")
        return data


def is_zstdchunked(tail: bytes) -> bool:
    return tail.endswith(CHUNKED_MAGIC)


def parse_zstd_footer(tail: bytes, blob_size: int) -> tuple[int, int, int]:
    """(TOC offset, compressed length, uncompressed length) from the last 72 bytes."""
    if not tail.endswith(CHUNKED_MAGIC):
        raise FormatError("not a zstd:chunked blob: footer magic missing")
    for payload_size in (FOOTER_SIZE, STORAGE_FOOTER_SIZE):
        if len(tail) < payload_size + 8:
            continue
        frame = tail[-(payload_size + 8) :]
        if frame[:4] == SKIPPABLE_MAGIC and struct.unpack("<I", frame[4:8])[0] == payload_size:
            off, clen, ulen, mtype = struct.unpack("<QQQQ", frame[8:40])
            if mtype != MANIFEST_TYPE_CRFS:
                raise FormatError(f"zstd:chunked manifest type {mtype} is not supported")
            data_end = blob_size - payload_size - 8
            if off < 8 or clen == 0 or off + clen > data_end:
                raise FormatError(f"zstd:chunked footer points outside the blob (offset {off}, length {clen})")
            return off, clen, ulen
    raise FormatError("zstd:chunked footer is malformed")


def open_zstdchunked(source: ReadAt, *, toc_digest: str | None = None, limits: Limits = DEFAULT_LIMITS) -> TOCIndex:
    if toc_digest:
        toc_digest = checked_toc_digest(toc_digest)
    max_toc_bytes = limits.max_toc_bytes
    size = source.size
    if size < FOOTER_SIZE + 8:
        raise FormatError(f"blob is {size} bytes: too small to be zstd:chunked")
    tail = source.read_at(max(size - 72, 0), min(size, 72))
    off, clen, ulen = parse_zstd_footer(tail, size)
    if clen > max_toc_bytes or ulen > max_toc_bytes:
        raise FormatError(f"TOC is {max(clen, ulen)} bytes, over the {max_toc_bytes} byte limit")
    # Streamed and bounded by the footer's length: a frame header may claim any content
    # size, and one-shot decompression would allocate it up front.
    toc_json = ZstdChunkDecoder().inflate(source.read_at(off, clen), ulen, "zstd:chunked TOC")
    if toc_digest:
        actual = "sha256:" + hashlib.sha256(toc_json).hexdigest()
        if actual != toc_digest:
            raise DigestMismatchError("TOC", toc_digest, actual)
    entries = iter_entries(toc_json, limits)
    del toc_json  # the generator holds the only reference and drops it once decoded
    return TOCIndex(
        entries, blob_size=size, data_end=off - 8, fmt="zstdchunked", decoder=ZstdChunkDecoder(), limits=limits
    )
