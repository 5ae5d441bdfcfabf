"""A SOCI layer re-opened the way a restarted layer server re-attaches it."""

from __future__ import annotations

import gzip
from pathlib import Path

from lazypull.cache.chunks import ChunkCache
from lazypull.format.soci import build_ztoc_bytes
from lazypull.format.soci.dispatch import with_ztoc
from lazypull.fs.spec import LayerSpec, open_layer_fs
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor
from tests.support.images import Entry, make_tar

DATA = b"served after a restart\n" * 1000


def test_reattach_takes_the_ztoc_from_the_chunk_cache(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    blob = gzip.compress(make_tar([Entry("a.txt", data=DATA)]), 6, mtime=0)
    ztoc = build_ztoc_bytes(blob, span_size=64 << 10).to_bytes()
    layer_path = blobs / digestlib.of_bytes(blob)[7:]
    ztoc_path = blobs / digestlib.of_bytes(ztoc)[7:]
    layer_path.write_bytes(blob)
    ztoc_path.write_bytes(ztoc)
    layer = Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(blob), len(blob))
    zdesc = Descriptor(mt.SOCI_ZTOC, digestlib.of_bytes(ztoc), len(ztoc))
    spec = LayerSpec(
        layer=with_ztoc(layer, zdesc).to_json(), cache_dir=str(tmp_path / "cache"), blob_path=str(layer_path)
    )
    saved = tmp_path / "saved" / "toc"
    cache = ChunkCache(tmp_path / "cache")
    _fs, _f, src, index = open_layer_fs(spec, cache, saved)
    assert index.read(src, "a.txt", 0, len(DATA)) == DATA
    cache.flush()  # the zTOC reaches the disk in the background: a new server finds it there
    ztoc_path.unlink()  # the registry is gone: only the cache can give the zTOC now
    _fs, _f, src, index = open_layer_fs(spec, ChunkCache(tmp_path / "cache"), saved)
    assert index.read(src, "a.txt", 0, len(DATA)) == DATA
