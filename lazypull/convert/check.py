"""Verify eStargz images: footer, TOC digest against the manifest, and (``full``) every chunk."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from lazypull.errors import DigestMismatchError, FormatError, LazypullError
from lazypull.format import open_layer
from lazypull.format.counting import CountingSource
from lazypull.format.index import Chunk, Entry, EntryType, LayerIndex
from lazypull.format.source import ReadAt
from lazypull.oci import mediatypes as mt
from lazypull.oci.resolve import image_manifests
from lazypull.oci.store import ImageStore
from lazypull.oci.types import Descriptor, Manifest, Platform, is_foreign_layer

WINDOW = 8 << 20  # read chunks in ranges of about this size


@dataclass
class LayerReport:
    digest: str
    kind: str  # "estargz", "gzip", ...
    entries: int = 0
    chunks_checked: int = 0
    bytes_read: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def manifests_of(store: ImageStore, platform: Platform | None, all_platforms: bool) -> Iterator[Manifest]:
    for d in image_manifests(store, store.resolve(), platform, all_platforms):
        yield Manifest.parse(store.fetch(d), d.media_type)


def iter_chunk_data(idx: LayerIndex, source: ReadAt) -> Iterator[tuple[Entry, Chunk, bytes]]:
    """Every chunk of every regular file, decoded and verified, read in large windows."""
    items = sorted(
        ((e, c) for e in idx.entries() if e.type == EntryType.REG for c in e.chunks),
        key=lambda ec: (ec[1].blob_offset, ec[1].inner_offset),
    )
    i = 0
    while i < len(items):
        start = items[i][1].blob_offset
        j = i
        end = items[i][1].blob_end
        while j + 1 < len(items) and items[j + 1][1].blob_end - start <= WINDOW:
            j += 1
            end = max(end, items[j][1].blob_end)
        window = source.read_at(start, end - start)
        for e, c in items[i : j + 1]:
            raw = window[c.blob_offset - start : c.blob_end - start]
            try:
                yield e, c, idx.decode_chunk(c, raw)
            except (FormatError, DigestMismatchError) as err:
                raise FormatError(f"{e.name}: {err}") from None
        i = j + 1


def check_layer(store: ImageStore, desc: Descriptor, full: bool) -> LayerReport:
    if is_foreign_layer(desc.media_type):
        return LayerReport(desc.digest, "non-distributable (not fetched)")
    toc_digest = desc.annotations.get(mt.ANNOTATION_TOC_DIGEST)
    if not toc_digest:
        return LayerReport(desc.digest, "not eStargz", error="" if not full else _check_whole(store, desc))
    src = CountingSource(store.blob_source(desc))
    rep = LayerReport(desc.digest, "lazy")
    try:
        idx = open_layer(src, toc_digest=toc_digest)
        rep.kind = idx.format
        rep.entries = len(list(idx.entries()))
        if full:
            hashes: dict[str, hashlib._Hash] = {}
            for e, _c, data in iter_chunk_data(idx, src):
                rep.chunks_checked += 1
                hashes.setdefault(e.name, hashlib.sha256()).update(data)
            for e in idx.entries():
                if e.type == EntryType.REG and e.digest and e.size:
                    actual = "sha256:" + hashes[e.name].hexdigest()
                    if actual != e.digest:
                        raise FormatError(f"{e.name}: file digest mismatch (TOC {e.digest}, content {actual})")
    except (LazypullError, OSError) as e:
        rep.error = str(e)
    rep.bytes_read = src.bytes_read
    return rep


def _check_whole(store: ImageStore, desc: Descriptor) -> str:
    try:
        with store.open_blob(desc) as f:
            from lazypull.oci.store import VerifyingReader

            r = VerifyingReader(f, desc)
            while r.read(1 << 20):
                pass
    except LazypullError as e:
        return str(e)
    return ""


def check_image(
    store: ImageStore, *, full: bool = False, platform: Platform | None = None, all_platforms: bool = False
) -> list[LayerReport]:
    reports = []
    seen: set[str] = set()
    for m in manifests_of(store, platform, all_platforms):
        for layer in m.layers:
            if layer.digest not in seen:
                seen.add(layer.digest)
                reports.append(check_layer(store, layer, full))
    return reports
