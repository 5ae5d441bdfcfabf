"""A zTOC's gzip checkpoints ("zinfo"): soci-snapshotter's byte layout, and spans.

The ``checkpoints`` blob of a zTOC is little-endian: ``int32 count``, ``int64 span_size``,
then per checkpoint ``int64 in`` (compressed offset), ``int64 out`` (uncompressed
offset), ``uint8 bits`` (bits of the byte before ``in`` that still belong to the next
block) and the 32 KiB window preceding ``out``. Blobs of soci's first version omit
checkpoint 0 (then fixed at the end of a 10-byte gzip header); both are read.

Span *i* is the compressed range ``[in_i - (1 if bits_i else 0), in_{i+1})`` (the last
span ends at the blob's end) and the uncompressed range ``[out_i, out_{i+1})``; the
zTOC's span digests are sha256 over those compressed ranges. Spans with leftover bits
overlap their predecessor by that one byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from lazypull.errors import FormatError
from lazypull.format.soci.zlibc import WINDOW

HEADER = struct.Struct("<iq")
POINT = struct.Struct("<qqB")
POINT_SIZE = POINT.size + WINDOW  # 32785
MAX_SPAN_BYTES = 256 << 20
_HEX = frozenset("0123456789abcdef")  # one span's uncompressed size; a deflate block is at most a few MiB


@dataclass(frozen=True, slots=True)
class Span:
    start: int  # compressed [start, end)
    end: int
    out_start: int  # uncompressed [out_start, out_end)
    out_end: int
    bits: int
    window: bytes | memoryview
    digest: str = ""


@dataclass
class Zinfo:
    span_size: int
    points: list[tuple[int, int, int, bytes | memoryview]]  # (in, out, bits, window)

    def to_bytes(self) -> bytes:
        parts = [HEADER.pack(len(self.points), self.span_size)]
        for cin, cout, bits, win in self.points:
            parts.append(POINT.pack(cin, cout, bits))
            parts.append(bytes(win))
        return b"".join(parts)

    @classmethod
    def parse(cls, blob: bytes) -> Zinfo:
        if len(blob) < HEADER.size:
            raise FormatError(f"zTOC checkpoints are {len(blob)} bytes, too short for their header")
        count, span_size = HEADER.unpack_from(blob)
        if count <= 0:
            raise FormatError(f"zTOC has {count} checkpoints")
        body = len(blob) - HEADER.size
        if body == count * POINT_SIZE:
            points: list[tuple[int, int, int, bytes | memoryview]] = []
        elif body == (count - 1) * POINT_SIZE:  # version 1: checkpoint 0 not stored
            points = [(10, 0, 0, bytes(WINDOW))]
        else:
            raise FormatError(f"zTOC checkpoints: {count} checkpoints do not fit {len(blob)} bytes")
        view = memoryview(blob)
        off = HEADER.size
        while off < len(blob):
            cin, cout, bits = POINT.unpack_from(blob, off)
            off += POINT.size
            points.append((cin, cout, bits, view[off : off + WINDOW]))
            off += WINDOW
        return cls(span_size, points)

    def spans(self, blob_size: int, uncompressed_size: int, digests: list[str]) -> list[Span]:
        """The spans, validated against the blob: any inconsistency is a FormatError."""
        if len(digests) != len(self.points):
            raise FormatError(f"zTOC has {len(digests)} span digests for {len(self.points)} checkpoints")
        out: list[Span] = []
        prev_start = prev_out = -1
        for i, (cin, cout, bits, _win) in enumerate(self.points):
            if not 0 <= bits <= 7:
                raise FormatError(f"zTOC checkpoint {i} has {bits} leftover bits")
            start = cin - (1 if bits else 0)
            if start <= prev_start or cout <= prev_out:
                raise FormatError(f"zTOC checkpoint {i} does not advance (in {cin}, out {cout})")
            # soci records the tar reader's end as the uncompressed size: a last checkpoint
            # may lie past it, in the archive's zero padding
            past = cout > uncompressed_size and i + 1 < len(self.points)
            if start < 0 or cin >= blob_size or past:
                raise FormatError(f"zTOC checkpoint {i} (in {cin}, out {cout}) lies outside the layer")
            prev_start, prev_out = start, cout
        for i, (cin, cout, bits, win) in enumerate(self.points):
            start = cin - (1 if bits else 0)
            last = i + 1 == len(self.points)
            end = blob_size if last else self.points[i + 1][0]
            out_end = max(uncompressed_size, cout) if last else self.points[i + 1][1]
            if end <= start or out_end - cout > MAX_SPAN_BYTES:
                raise FormatError(f"zTOC span {i} has an invalid size")
            d = digests[i]
            if not (d.startswith("sha256:") and len(d) == 71 and all(c in _HEX for c in d[7:])):
                raise FormatError(f"zTOC span {i} has an unsupported digest {d[:80]!r}")
            out.append(Span(start, end, cout, out_end, bits, win, d))
        return out
