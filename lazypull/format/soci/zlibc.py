"""The system zlib through ctypes: inflate that stops at deflate block boundaries.

Python's ``zlib`` module cannot stop at block boundaries (``Z_BLOCK``), report the bit
position there, or prime a stream with leftover bits (``inflatePrime``): exactly what a
zran-style checkpoint index needs to be built and used. libz.so.1 is on every system
that runs CPython (its ``zlib`` module links it), so a few ctypes calls give the same
C inflate speed with no build step. Every foreign call releases the GIL.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Iterator
from typing import Protocol

from lazypull.errors import FormatError


class RawStream(Protocol):
    """What the inflater reads a gzip stream from: a raw or in-memory binary file."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...

    def read(self, size: int = -1, /) -> bytes: ...

WINDOW = 32768  # deflate's maximum back-reference distance: a checkpoint's dictionary

Z_OK, Z_STREAM_END, Z_NEED_DICT, Z_BUF_ERROR = 0, 1, 2, -5
Z_NO_FLUSH, Z_BLOCK = 0, 5


class _ZStream(ctypes.Structure):
    _fields_ = [
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    ]


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("z") or "libz.so.1"
    lib = ctypes.CDLL(name)
    p = ctypes.POINTER(_ZStream)
    lib.zlibVersion.restype = ctypes.c_char_p
    lib.inflateInit2_.argtypes = [p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.inflate.argtypes = [p, ctypes.c_int]
    lib.inflateEnd.argtypes = [p]
    lib.inflatePrime.argtypes = [p, ctypes.c_int, ctypes.c_int]
    lib.inflateSetDictionary.argtypes = [p, ctypes.c_char_p, ctypes.c_uint]
    return lib


_lib = _load()
_VERSION = _lib.zlibVersion()


class _Inflate:
    """One z_stream; ``window_bits`` -15 for raw deflate, 47 for gzip/zlib auto-detect."""

    def __init__(self, window_bits: int) -> None:
        self.s = _ZStream()
        ret = _lib.inflateInit2_(ctypes.byref(self.s), window_bits, _VERSION, ctypes.sizeof(_ZStream))
        if ret != Z_OK:
            raise FormatError(f"zlib inflateInit2 failed ({ret})")

    def close(self) -> None:
        _lib.inflateEnd(ctypes.byref(self.s))

    def step(self, flush: int) -> int:
        ret: int = _lib.inflate(ctypes.byref(self.s), flush)
        if ret == Z_NEED_DICT or (ret < 0 and ret != Z_BUF_ERROR):
            msg = self.s.msg.decode(errors="replace") if self.s.msg else f"error {ret}"
            raise FormatError(f"corrupt deflate data: {msg}")
        return ret


# (compressed offset, uncompressed offset, unused bits before the offset, 32 KiB window)
CheckpointTuple = tuple[int, int, int, bytes]


def inflate_with_checkpoints(
    src: RawStream, span: int, add: Callable[[int, int, int, bytes], None], *, out_size: int = 1 << 20
) -> Iterator[bytes]:
    """Inflate one gzip member from *src*, yielding its output in pieces; call *add* for
    each checkpoint: after the header, then at the first block boundary more than *span*
    uncompressed bytes past the previous one (zran's rule, which soci-snapshotter uses).
    Raises FormatError on corrupt or truncated data, or a second gzip member."""
    z = _Inflate(47)
    inbuf = ctypes.create_string_buffer(1 << 20)
    inview = memoryview(inbuf).cast("B")
    inaddr = ctypes.addressof(inbuf)
    outbuf = ctypes.create_string_buffer(out_size)
    outaddr = ctypes.addressof(outbuf)
    s = z.s
    totin = totout = last = outpos = 0
    tail = b""  # the last WINDOW output bytes before outbuf's start
    try:
        while True:
            if s.avail_in == 0:
                n = src.readinto(inview)
                if not n:
                    raise FormatError("gzip stream is truncated")
                s.next_in, s.avail_in = inaddr, n
            if outpos == out_size:
                yield ctypes.string_at(outaddr, out_size)
                tail = ctypes.string_at(outaddr + out_size - WINDOW, WINDOW)
                outpos = 0
            s.next_out, s.avail_out = outaddr + outpos, out_size - outpos
            before_in, before_out = s.avail_in, s.avail_out
            ret = z.step(Z_BLOCK)
            totin += before_in - s.avail_in
            produced = before_out - s.avail_out
            totout += produced
            outpos += produced
            if ret == Z_STREAM_END:
                break
            dt = s.data_type
            if dt & 128 and not dt & 64 and (totout == 0 or totout - last > span):
                have = min(outpos, WINDOW)
                win = tail + ctypes.string_at(outaddr + outpos - have, have)
                win = win[-WINDOW:].rjust(WINDOW, b"\0")
                add(totin, totout, dt & 7, win)
                last = totout
        if outpos:
            yield ctypes.string_at(outaddr, outpos)
        rest = bytes(inview[s.next_in - inaddr : s.next_in - inaddr + s.avail_in]) + src.read()
        # after the member: the 8-byte trailer (already consumed by inflate), then nothing
        if rest.strip(b"\0"):
            raise FormatError("the layer has more than one gzip member; a zTOC covers single-member gzip only")
    finally:
        z.close()


def inflate_from(raw: bytes | memoryview, bits: int, window: bytes | memoryview, need: int) -> bytes:
    """The first *need* bytes inflated from a checkpoint: *raw* starts at the byte holding
    the checkpoint's *bits* leftover bits (or at its offset when bits is 0); *window* is
    its dictionary. FormatError if the data is corrupt or ends first."""
    if need <= 0:
        return b""
    if not 0 <= bits <= 7 or len(window) != WINDOW:
        raise FormatError(f"invalid checkpoint (bits {bits}, window {len(window)} bytes)")
    data = bytes(raw)
    z = _Inflate(-15)
    try:
        pos = 0
        if bits:
            if not data:
                raise FormatError("empty span")
            _lib.inflatePrime(ctypes.byref(z.s), bits, data[0] >> (8 - bits))
            pos = 1
        _lib.inflateSetDictionary(ctypes.byref(z.s), bytes(window), WINDOW)
        out = ctypes.create_string_buffer(need)
        inbuf = ctypes.c_char_p(data)
        s = z.s
        s.next_in = ctypes.cast(inbuf, ctypes.c_void_p).value + pos  # type: ignore[operator]
        s.avail_in = len(data) - pos
        s.next_out, s.avail_out = ctypes.addressof(out), need
        while s.avail_out:
            before = (s.avail_in, s.avail_out)
            ret = z.step(Z_NO_FLUSH)
            if ret == Z_STREAM_END or (s.avail_in, s.avail_out) == before:
                break
        if s.avail_out:
            raise FormatError(f"span inflates to {need - s.avail_out} bytes, fewer than the {need} expected")
        return out.raw
    finally:
        z.close()
