"""Find an artifact's chunk index: what opening or mounting an artifact asks before
streaming its raw blobs whole.

Trust, as for SOCI indexes: listed by the artifact manifest's digest (referrers API or tag),
fetched by its own digest (verified) and required to name that manifest as its subject; the
index blob is then fetched by the digest that manifest gives, each chunk checked by its
digest. Anything missing or malformed means "no index": blobs are streamed whole, verified.
"""

from __future__ import annotations

import logging

from lazypull.chunkindex.index import manifest_index_layer
from lazypull.errors import LazypullError
from lazypull.format.chunklist import MAX_INDEX_BYTES, parse_index
from lazypull.format.soci.dispatch import with_chunks
from lazypull.oci import mediatypes as mt
from lazypull.oci.artifacts import Kind, file_path, is_tar_layer
from lazypull.oci.store import ImageStore
from lazypull.oci.types import Descriptor

log = logging.getLogger(__name__)


def find_chunk_index(store: ImageStore, subject_digest: str) -> tuple[Descriptor, set[str]] | None:
    """(the newest chunk index blob referring to *subject_digest*, the blob digests it lists),
    or None when there is none or it is unusable."""
    from lazypull.registry.referrers import list_referrers
    from lazypull.registry.repository import RegistryStore

    if not isinstance(store, RegistryStore):
        return None
    try:
        found = list_referrers(store.client, store.ref, subject_digest, mt.CHUNK_INDEX_ARTIFACT_TYPE)
        for desc in reversed(found):  # the tag schema appends: newest last
            doc = store.fetch(Descriptor(mt.OCI_MANIFEST, desc.digest, desc.size))
            layer = manifest_index_layer(doc, subject_digest)
            return layer, set(parse_index(store.fetch(layer, limit=MAX_INDEX_BYTES)))
    except LazypullError as e:
        log.warning("no usable chunk index for %s@%s: %s", store.ref, subject_digest, e)
    return None


def with_chunk_index(store: ImageStore, subject_digest: str, layers: list[Descriptor], kind: Kind) -> list[Descriptor]:
    """An artifact's layers, each raw one its chunk index covers carrying it (lazy reads).

    The annotation is lazypull's own: one that came with the artifact is dropped first."""
    clean = []
    for d in layers:
        ann = {k: v for k, v in d.annotations.items() if k != mt.ANNOTATION_LAZYPULL_CHUNKS}
        clean.append(Descriptor(d.media_type, d.digest, d.size, ann, d.platform, d.urls, d.extra))
    raw = [d for d in clean if not is_tar_layer(d, kind)]
    found = find_chunk_index(store, subject_digest) if raw else None
    if found is None:
        return clean
    index, listed = found
    return [with_chunks(d, index, file_path(d)) if d in raw and d.digest in listed else d for d in clean]
