from __future__ import annotations

import hashlib
import io
import struct

import pytest
import zstandard

from lazypull.errors import DigestMismatchError, FormatError
from lazypull.format import BytesSource, open_layer
from lazypull.format.zstdchunked import CHUNKED_MAGIC, build_zstdchunked, open_zstdchunked, skippable_frame
from lazypull.oci import mediatypes as mt
from tests.format.helpers import assert_matches_tar
from tests.format.test_estargz import sample_entries
from tests.support.images import make_tar


def build(**kw: object) -> tuple[bytes, bytes, object]:
    tar = make_tar(sample_entries())
    out = io.BytesIO()
    res = build_zstdchunked(io.BytesIO(tar), out, chunk_size=300_000, **kw)  # type: ignore[arg-type]
    return tar, out.getvalue(), res


def test_roundtrip_and_ids() -> None:
    tar, blob, res = build()
    idx = open_layer(BytesSource(blob), toc_digest=res.toc_digest)  # type: ignore[attr-defined]
    assert idx.format == "zstdchunked"
    assert_matches_tar(idx, blob, tar)
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()
    assert res.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()  # type: ignore[attr-defined]
    assert res.uncompressed_size == len(plain)  # type: ignore[attr-defined]
    pos = res.annotations[mt.ANNOTATION_ZSTD_CHUNKED_MANIFEST_POSITION].split(":")  # type: ignore[attr-defined]
    off, clen = int(pos[0]), int(pos[1])
    assert (
        res.annotations[mt.ANNOTATION_ZSTD_CHUNKED_MANIFEST_CHECKSUM]
        == (  # type: ignore[attr-defined]
            "sha256:" + hashlib.sha256(blob[off : off + clen]).hexdigest()
        )
    )


def test_prioritized_and_deterministic() -> None:
    _, a, _ = build(prioritized_files=["etc/small"])
    _, b, res = build(prioritized_files=["etc/small"])
    assert a == b
    idx = open_layer(BytesSource(a), toc_digest=res.toc_digest)  # type: ignore[attr-defined]
    assert idx.prefetch_end > 0 and idx.lookup("etc/small").chunks[0].blob_end <= idx.prefetch_end  # type: ignore[union-attr]


def test_bad_inputs() -> None:
    _, blob, res = build()
    with pytest.raises(DigestMismatchError):
        open_zstdchunked(BytesSource(blob), toc_digest="sha256:" + "1" * 64)
    with pytest.raises(FormatError):
        open_zstdchunked(BytesSource(blob[:-3]))
    evil = skippable_frame(struct.pack("<QQQQ", 10**12, 5, 5, 1) + CHUNKED_MAGIC)
    with pytest.raises(FormatError, match="outside"):
        open_zstdchunked(BytesSource(b"\0" * 100 + evil))
    idx = open_layer(BytesSource(blob), toc_digest=res.toc_digest)  # type: ignore[attr-defined]
    big = idx.lookup("etc/big")
    assert big is not None
    damaged = bytearray(blob)
    damaged[big.chunks[1].blob_offset + 40] ^= 0xFF
    with pytest.raises((FormatError, DigestMismatchError)):
        idx.read(BytesSource(bytes(damaged)), "etc/big", 300_000, 10)


def test_containers_storage_64_byte_footer_is_read() -> None:
    tar, blob, res = build()
    off, clen, ulen, _t = struct.unpack("<QQQQ", blob[-40:-8])
    payload = struct.pack("<QQQQQQQ", off, clen, ulen, 1, 0, 0, 0) + CHUNKED_MAGIC
    storage_blob = blob[:-48] + skippable_frame(payload)
    idx = open_zstdchunked(BytesSource(storage_blob), toc_digest=res.toc_digest)  # type: ignore[attr-defined]
    assert_matches_tar(idx, storage_blob, tar)
