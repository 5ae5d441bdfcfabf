"""Gzip members written byte-for-byte like Go's compress/gzip (the reference's writer).

Each member is a raw-deflate stream inside a fixed header (MTIME 0, OS 255) so output
is deterministic and independent of the Python build. Compression releases the GIL,
so members can be compressed on several threads at once.
"""

from __future__ import annotations

import struct
import zlib

from isal import isal_zlib

from lazypull.errors import FormatError

GZIP_MAGIC = b"\x1f\x8b"


def _xfl(level: int) -> int:
    # Go: 2 for BestCompression, 4 for BestSpeed, else 0.
    return 2 if level == 9 else 4 if level == 1 else 0


def compress_member(data: bytes | memoryview, level: int) -> bytes:
    """One complete gzip member holding *data*."""
    c = zlib.compressobj(level, zlib.DEFLATED, -15, 9)
    body = c.compress(data) + c.flush()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes([_xfl(level), 0xFF])
    return header + body + struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)


_FEED = 64 << 10  # input handed to the inflater at a time
MAX_MEMBERS = 4096  # gzip members one chunk may span (the reference writes one per chunk)


def decompress_prefix(raw: bytes | memoryview, need: int, what: str) -> bytes:
    """The first *need* bytes decompressed from the gzip member(s) starting at raw[0].

    Bounded: never inflates more than *need* bytes, so a hostile span cannot expand
    into unbounded memory. Crosses member boundaries when a span holds several; after
    the first member, input is fed in small pieces, so even a span of thousands of tiny
    members costs linear time.
    """
    if need <= 0:
        return b""  # (a max_length of 0 would mean "no limit")
    try:
        d = isal_zlib.decompressobj(31)
        first = d.decompress(raw, need)
        if len(first) == need:
            return first  # the common case: one member, one allocation
        out = bytearray(first)
        rest = memoryview(d.unused_data if d.eof else b"")
        pos = 0
        members = 1
        while len(out) < need and pos < len(rest):
            members += 1
            if members > MAX_MEMBERS:
                raise FormatError(f"{what}: spans more than {MAX_MEMBERS} gzip members")
            d = isal_zlib.decompressobj(31)
            while len(out) < need and pos < len(rest) and not d.eof:
                piece = rest[pos : pos + _FEED]
                out += d.decompress(piece, need - len(out))
                pos += len(piece) - len(d.unused_data if d.eof else d.unconsumed_tail)
            if not d.eof:
                break
    except (isal_zlib.error, zlib.error) as e:  # type: ignore[misc]  # isal's stub: `error: Exception`, a class
        raise FormatError(f"{what}: corrupt gzip data ({e})") from None
    if len(out) < need:
        raise FormatError(f"{what}: compressed data ends after {len(out)} of {need} bytes")
    return bytes(out)
