"""``lazypull index create``: chunk digests of an artifact's raw blobs, pushed as its referrer.

Pushed through :mod:`lazypull.registry.referrers`, as SOCI indexes are. The artifact itself
is never rewritten: its digest (and any signature over it) stays valid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lazypull.chunkindex.index import EMPTY_CONFIG, config_descriptor, index_manifest
from lazypull.errors import LazypullError
from lazypull.format.chunklist import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, BlobChunks, digest_chunks, index_bytes
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.artifacts import Kind, is_tar_layer, kind_of
from lazypull.oci.types import Descriptor, Manifest

if TYPE_CHECKING:
    from lazypull.registry.repository import RegistryStore


def raw_layers(manifest: Manifest) -> list[Descriptor]:
    """The artifact's layers that are single files (what a chunk index covers)."""
    kind = kind_of(manifest)
    if kind == Kind.IMAGE:
        return []
    return [d for d in manifest.layers if not is_tar_layer(d, kind)]


def safetensors_head(prefix: bytes, size: int) -> int:
    """The bytes before a safetensors file's first tensor (8-byte length + JSON header), as the
    first chunk of its own: opening the file then fetches its header and nothing more, and a
    tensor read costs at most one chunk at each end. 0 when *prefix* is not such a file's."""
    if len(prefix) < 9 or prefix[8:9] != b"{":
        return 0
    head = 8 + int.from_bytes(prefix[:8], "little")
    return head if head <= min(size, MAX_CHUNK_SIZE) else 0


def create_chunk_index(
    store: RegistryStore,
    subject: Descriptor,
    manifest: Manifest,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Callable[[BlobChunks], None] | None = None,
) -> tuple[Descriptor, str]:
    """Digest every raw blob of the artifact by chunk and push the index as a referrer of
    *subject*; returns (the index manifest's descriptor, "api" or "tag")."""
    blobs = []
    seen: set[str] = set()
    for layer in raw_layers(manifest):
        if layer.digest in seen:
            continue
        seen.add(layer.digest)
        head = safetensors_head(store.blob_source(layer).read_at(0, 9) if layer.size >= 9 else b"", layer.size)
        with store.open_blob(layer) as f:
            b = digest_chunks(f, layer, chunk_size, head)
        blobs.append(b)
        if progress:
            progress(b)
    if not blobs:
        raise LazypullError(f"{store.name} has no raw file layers to index (tar layers convert to eStargz instead)")
    return push_chunk_index(store, subject, blobs)


def push_chunk_index(store: RegistryStore, subject: Descriptor, blobs: list[BlobChunks]) -> tuple[Descriptor, str]:
    """Push the index of *blobs* as a referrer of *subject*; returns (its manifest, "api" or "tag")."""
    data = index_bytes(blobs)
    layer = Descriptor(mt.CHUNK_INDEX_LAYER, digestlib.of_bytes(data), len(data))
    store.push_bytes(layer, data)
    store.push_bytes(config_descriptor(), EMPTY_CONFIG)
    doc = index_manifest(subject, layer)
    desc = Descriptor(
        mt.OCI_MANIFEST, digestlib.of_bytes(doc), len(doc), extra={"artifactType": mt.CHUNK_INDEX_ARTIFACT_TYPE}
    )
    from lazypull.registry.referrers import push_referrer

    how = push_referrer(store.client, store.ref, doc, desc, subject.digest)
    return desc, how
