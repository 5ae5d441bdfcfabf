"""Find an artifact's chunk index: what opening an artifact asks before streaming raw blobs whole.

Trust, as for SOCI indexes: listed by the artifact manifest's digest (referrers API or tag),
fetched by its own digest (verified) and required to name that manifest as its subject; the
index blob is fetched by the digest the manifest gives, each chunk then checked by its
digest. Anything missing or malformed means "no index": blobs are streamed whole, verified.
"""

from __future__ import annotations

import logging

from lazypull.chunkindex.index import MAX_INDEX_BYTES, BlobChunks, manifest_index_layer, parse_index
from lazypull.errors import LazypullError
from lazypull.oci import mediatypes as mt
from lazypull.oci.store import ImageStore
from lazypull.oci.types import Descriptor

log = logging.getLogger(__name__)


def find_chunk_index(store: ImageStore, subject_digest: str) -> dict[str, BlobChunks]:
    """{blob digest: chunks} from the newest chunk index referring to *subject_digest*;
    {} when there is none or it is unusable (the blobs are then streamed whole, verified)."""
    from lazypull.registry.referrers import list_referrers
    from lazypull.registry.repository import RegistryStore

    if not isinstance(store, RegistryStore):
        return {}
    try:
        found = list_referrers(store.client, store.ref, subject_digest, mt.CHUNK_INDEX_ARTIFACT_TYPE)
        for desc in reversed(found):  # the tag schema appends: newest last
            doc = store.fetch(Descriptor(mt.OCI_MANIFEST, desc.digest, desc.size))
            layer = manifest_index_layer(doc, subject_digest)
            return parse_index(store.fetch(layer, limit=MAX_INDEX_BYTES))
    except LazypullError as e:
        log.warning("no usable chunk index for %s@%s: %s", store.ref, subject_digest, e)
    return {}
