"""Footers that locate the TOC at the end of a layer blob.

eStargz: a 51-byte empty gzip member whose Extra field is ``SG`` + ``%016xSTARGZ``.
Legacy stargz (google/crfs): 47 bytes, the same without the ``SG``/LEN subfield header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from lazypull.errors import FormatError

ESTARGZ_FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47
_MAGIC = b"STARGZ"
# Empty stored deflate block (BFINAL=1, BTYPE=00, LEN=0, NLEN=0xffff), then CRC32 0 and ISIZE 0.
_EMPTY_BODY = b"\x01\x00\x00\xff\xff" + b"\x00" * 8


def _header(xlen: int) -> bytes:
    # ID1 ID2 CM=8 FLG=FEXTRA MTIME=0 XFL=0 OS=255, then XLEN
    return b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff" + struct.pack("<H", xlen)


def estargz_footer(toc_offset: int) -> bytes:
    sub = b"%016x" % toc_offset + _MAGIC
    out = _header(4 + len(sub)) + b"SG" + struct.pack("<H", len(sub)) + sub + _EMPTY_BODY
    assert len(out) == ESTARGZ_FOOTER_SIZE
    return out


def legacy_footer(toc_offset: int) -> bytes:
    sub = b"%016x" % toc_offset + _MAGIC
    out = _header(len(sub)) + sub + _EMPTY_BODY
    assert len(out) == LEGACY_FOOTER_SIZE
    return out


@dataclass(frozen=True)
class Footer:
    toc_offset: int
    size: int  # footer length in bytes (51 or 47)
    legacy: bool


def _parse_offset(text: bytes, blob_size: int, footer_size: int) -> int:
    if len(text) != 22 or not text.endswith(_MAGIC):
        raise FormatError("footer lacks the STARGZ magic")
    hexpart = text[:16]
    try:
        off = int(hexpart, 16)
    except ValueError:
        raise FormatError("footer TOC offset is not hexadecimal") from None
    if not all(c in b"0123456789abcdefABCDEF" for c in hexpart):
        raise FormatError("footer TOC offset is not hexadecimal")
    if off >= blob_size - footer_size:
        raise FormatError(f"footer points at TOC offset {off}, beyond the blob ({blob_size} bytes)")
    return off


def parse_footer(tail: bytes, blob_size: int) -> Footer:
    """Parse the footer from the last bytes of a blob (pass at least 51 bytes when available)."""
    if len(tail) >= ESTARGZ_FOOTER_SIZE:
        f = tail[-ESTARGZ_FOOTER_SIZE:]
        if f[:4] == b"\x1f\x8b\x08\x04" and f[10:12] == b"\x1a\x00" and f[12:14] == b"SG" and f[14:16] == b"\x16\x00":
            return Footer(_parse_offset(f[16:38], blob_size, ESTARGZ_FOOTER_SIZE), ESTARGZ_FOOTER_SIZE, False)
    if len(tail) >= LEGACY_FOOTER_SIZE:
        f = tail[-LEGACY_FOOTER_SIZE:]
        if f[:4] == b"\x1f\x8b\x08\x04" and f[10:12] == b"\x16\x00":
            return Footer(_parse_offset(f[12:34], blob_size, LEGACY_FOOTER_SIZE), LEGACY_FOOTER_SIZE, True)
    raise FormatError("not an eStargz/stargz blob: no valid footer at the end (truncated or not converted?)")
