"""Verify eStargz images: footer, TOC digest against the manifest, and (``full``) every chunk."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from lazypull.errors import DigestMismatchError, FormatError, LazypullError
from lazypull.format import open_layer
from lazypull.format.counting import CountingSource
from lazypull.format.index import Chunk, Entry, EntryType, LayerIndex
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.resolve import image_manifests
from lazypull.oci.store import ImageStore
from lazypull.oci.types import Descriptor, Manifest, Platform, is_foreign_layer
from lazypull.source import ReadAt

WINDOW = 8 << 20  # read chunks in ranges of about this size


@dataclass
class LayerReport:
    digest: str
    kind: str  # "estargz", "gzip", ...
    entries: int = 0
    chunks_checked: int = 0
    bytes_read: int = 0
    error: str = ""
    lazy: bool = True  # False: no index (nor SOCI zTOC), so nodes pull the layer in full

    @property
    def ok(self) -> bool:
        return not self.error


def manifests_of(store: ImageStore, platform: Platform | None, all_platforms: bool) -> Iterator[Manifest]:
    for d in image_manifests(store, store.resolve(), platform, all_platforms):
        yield Manifest.parse(store.fetch(d), d.media_type)


def iter_chunk_data(
    idx: LayerIndex, source: ReadAt, whole: digestlib.Digester | None = None
) -> Iterator[tuple[Entry, Chunk, bytes]]:
    """Every chunk of every regular file, decoded and verified, read in large windows.

    With *whole*, every byte of the blob (the gaps between chunks, TOC and footer too) is
    read once, in order, and fed to it: the caller can then check the blob's own digest."""
    items = sorted(
        ((e, c) for e in idx.entries() if e.type == EntryType.REG for c in e.chunks),
        key=lambda ec: (ec[1].blob_offset, ec[1].inner_offset),
    )
    pos = 0  # with *whole*: the blob is hashed up to here

    def hash_to(end: int) -> None:
        nonlocal pos
        assert whole is not None
        while pos < end:
            n = min(WINDOW, end - pos)
            whole.update(source.read_at(pos, n))
            pos += n

    i = 0
    while i < len(items):
        start = items[i][1].blob_offset
        if whole is not None:
            hash_to(start)
        j = i
        end = items[i][1].blob_end
        while j + 1 < len(items) and items[j + 1][1].blob_end - start <= WINDOW:
            j += 1
            end = max(end, items[j][1].blob_end)
        window = source.read_at(start, end - start)
        if whole is not None and end > pos:
            whole.update(memoryview(window)[pos - start :])
            pos = end
        for e, c in items[i : j + 1]:
            raw = window[c.blob_offset - start : c.blob_end - start]
            try:
                yield e, c, idx.decode_chunk(c, raw)
            except (FormatError, DigestMismatchError) as err:
                raise FormatError(f"{e.name}: {err}") from None
        i = j + 1
    if whole is not None:
        hash_to(source.size)


def check_layer(store: ImageStore, desc: Descriptor, full: bool, ztoc: bool = False) -> LayerReport:
    """One layer: its index verified (every chunk with *full*); *ztoc*: a SOCI zTOC indexes it."""
    if is_foreign_layer(desc.media_type):
        return LayerReport(desc.digest, "non-distributable (not fetched)")
    toc_digest = desc.annotations.get(mt.ANNOTATION_TOC_DIGEST)
    if not toc_digest:
        error = "" if not full else _check_whole(store, desc)
        if ztoc:
            return LayerReport(desc.digest, "gzip + SOCI zTOC", error=error)
        return LayerReport(desc.digest, "not eStargz", error=error, lazy=False)
    rep = LayerReport(desc.digest, "lazy")
    try:
        src = CountingSource(store.blob_source(desc))
    except FormatError as e:  # truncated: this layer fails, the others are still checked
        rep.error = str(e)
        return rep
    try:
        idx = open_layer(src, toc_digest=toc_digest)
        rep.kind = idx.format
        rep.entries = sum(1 for _ in idx.entries())
        if full:
            hashes: dict[str, hashlib._Hash] = {}
            hashed: dict[str, int] = {}  # bytes hashed so far, while chunks come in file order
            unordered: list[Entry] = []  # files whose chunks lie out of order in the blob
            whole = digestlib.Digester(digestlib.algorithm(desc.digest))
            for ent, c, data in iter_chunk_data(idx, src, whole):
                rep.chunks_checked += 1
                if hashed.setdefault(ent.name, 0) != c.file_offset:
                    if hashed[ent.name] >= 0:
                        unordered.append(ent)
                    hashed[ent.name] = -1
                    continue
                hashes.setdefault(ent.name, hashlib.sha256()).update(data)
                hashed[ent.name] += c.size
            for ent in unordered:  # re-read in file order: rare, only for odd or crafted layouts
                h = hashes[ent.name] = hashlib.sha256()
                for off in range(0, ent.size, WINDOW):
                    h.update(idx.read(src, ent.name, off, WINDOW))
            for ent in idx.entries():
                if ent.type == EntryType.REG and ent.digest and ent.size:
                    actual = "sha256:" + hashes[ent.name].hexdigest()
                    if actual != ent.digest:
                        raise FormatError(f"{ent.name}: file digest mismatch (TOC {ent.digest}, content {actual})")
            # Every byte was read: the blob itself must be the one the manifest names
            # (bytes outside the chunks, e.g. tar headers, are covered by nothing else).
            if whole.size != desc.size:
                raise FormatError(f"blob is {whole.size} bytes, the manifest says {desc.size}")
            if whole.digest() != desc.digest:
                raise DigestMismatchError("blob", desc.digest, whole.digest())
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
    for d in image_manifests(store, store.resolve(), platform, all_platforms):
        m = Manifest.parse(store.fetch(d), d.media_type)
        unindexed = any(mt.ANNOTATION_TOC_DIGEST not in x.annotations for x in m.layers)
        ztocs = _soci_layers(store, d.digest, m.annotations) if unindexed else set()
        for layer in m.layers:
            if layer.digest not in seen:
                seen.add(layer.digest)
                reports.append(check_layer(store, layer, full, ztoc=layer.digest in ztocs))
    return reports


def _soci_layers(store: ImageStore, manifest_digest: str, annotations: dict[str, str]) -> set[str]:
    """Layers a SOCI index in the registry gives a zTOC (mounted lazily unconverted)."""
    from lazypull.registry.repository import RegistryStore

    if not isinstance(store, RegistryStore):
        return set()
    from lazypull.soci.find import soci_ztocs

    return set(soci_ztocs(store.client, store.ref, manifest_digest, annotations))
