"""Find the zTOCs of an image's layers: what the mount paths ask before falling back to a pull.

Two sources, the packaged one first. SOCI index manifest v2: the image manifest's
``com.amazon.soci.index-digest`` annotation names the index, so the manifest's own digest
(which the runtime verified) binds it; it is fetched by that digest (verified) and must be
typed v2. SOCI v1: the index is listed by the image manifest's digest (referrers API or
tag), fetched by its own digest (verified) and must name that manifest as its subject; the
newest listed wins. A v2 index wins over v1 ones (soci-snapshotter v0.10+ reads only v2 by
default; a v1 index can be added to or removed from any image by whoever may push, a v2 one
cannot). Each zTOC is then fetched by the digest the index gives (verified when the layer
mounts), and each span by the zTOC's digests. Anything missing or malformed means "no
SOCI" from that source: the next one is tried, and with none the layer is pulled normally.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from lazypull.errors import LazypullError
from lazypull.format.soci.dispatch import is_lazy, with_ztoc
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor, Manifest
from lazypull.registry.client import RegistryClient
from lazypull.registry.reference import Reference
from lazypull.registry.referrers import list_referrers
from lazypull.soci.index import SociIndex

log = logging.getLogger(__name__)

_cache: OrderedDict[tuple[str, str, str, str], tuple[float, dict[str, Descriptor]]] = OrderedDict()
_lock = threading.Lock()
TTL_SEC = 60.0  # a v1 index pushed (or removed) later is seen within a minute


def soci_ztocs(
    client: RegistryClient, ref: Reference, manifest_digest: str, annotations: dict[str, str] | None = None
) -> dict[str, Descriptor]:
    """{layer digest: zTOC descriptor} for the image manifest *manifest_digest* (whose
    *annotations* the caller has read; fetched when None): from its v2 SOCI index, else the
    newest v1 one ({} when it has none). Cached per manifest."""
    if annotations is None:
        annotations = _annotations(client, ref, manifest_digest)
    v2_digest = annotations.get(mt.ANNOTATION_SOCI_INDEX_DIGEST, "")
    key = (ref.registry, ref.repository, manifest_digest, v2_digest)
    with _lock:
        hit = _cache.get(key)
    if hit is not None and time.monotonic() - hit[0] < TTL_SEC:
        return hit[1]
    found = _from_v2(client, ref, v2_digest) if v2_digest else None
    if found is None:
        found = _from_v1(client, ref, manifest_digest) if manifest_digest else {}
    with _lock:
        _cache[key] = (time.monotonic(), found)
        _cache.move_to_end(key)
        while len(_cache) > 64:
            _cache.popitem(last=False)
    return found


def _annotations(client: RegistryClient, ref: Reference, manifest_digest: str) -> dict[str, str]:
    if not manifest_digest:
        return {}
    try:
        data, media_type, _dg = client.get_manifest(ref.with_digest(manifest_digest))
        return Manifest.parse(data, media_type).annotations
    except LazypullError as e:
        log.warning("cannot read the manifest %s of %s for its SOCI index: %s", manifest_digest, ref, e)
        return {}


def _ztoc_map(index: SociIndex) -> dict[str, Descriptor]:
    found: dict[str, Descriptor] = {}
    for z in index.ztocs:
        layer = z.annotations.get(mt.ANNOTATION_SOCI_LAYER_DIGEST)
        if layer:
            found[layer] = Descriptor(z.media_type, z.digest, z.size)
    return found


def _from_v2(client: RegistryClient, ref: Reference, index_digest: str) -> dict[str, Descriptor] | None:
    """The zTOCs of the v2 index the image manifest names; None when it is unusable."""
    try:
        digestlib.validate(index_digest)
        data, _mt, _dg = client.get_manifest(ref.with_digest(index_digest))  # verified against the digest
        index = SociIndex.parse(data)
    except LazypullError as e:
        log.warning("the SOCI v2 index %.100s of %s is unusable (%s); trying v1 indexes", index_digest, ref, e)
        return None
    if not index.is_v2:
        log.warning("%s names %s as its SOCI v2 index, but it is %s; ignored", ref, index_digest, index.artifact_type)
        return None
    found = _ztoc_map(index)
    log.info("using SOCI v2 index %s for %s (%d zTOCs)", index_digest, ref, len(found))
    return found


def _from_v1(client: RegistryClient, ref: Reference, manifest_digest: str) -> dict[str, Descriptor]:
    try:
        indexes = list_referrers(client, ref, manifest_digest, mt.SOCI_INDEX_ARTIFACT_TYPE)
        for desc in reversed(indexes):  # the tag schema appends: newest last
            data, _mt, _dg = client.get_manifest(ref.with_digest(desc.digest))
            index = SociIndex.parse(data)
            if index.is_v2 or index.subject is None or index.subject.digest != manifest_digest:
                log.warning("SOCI index %s names another subject; ignored", desc.digest)
                continue
            found = _ztoc_map(index)
            log.info("using SOCI index %s for %s (%d zTOCs)", desc.digest, ref, len(found))
            return found
    except LazypullError as e:
        log.warning("no usable SOCI index for %s@%s: %s", ref, manifest_digest, e)
    return {}


def with_soci(layers: list[Descriptor], ztocs: dict[str, Descriptor]) -> list[Descriptor]:
    """The layers, those with a zTOC carrying it (gzip layers that are not eStargz only)."""
    out = []
    for layer in layers:
        z = ztocs.get(layer.digest)
        ann = {k: v for k, v in layer.annotations.items() if k != mt.ANNOTATION_LAZYPULL_ZTOC}
        clean = Descriptor(layer.media_type, layer.digest, layer.size, ann, layer.platform, layer.urls, layer.extra)
        if z is not None and mt.ANNOTATION_TOC_DIGEST not in ann and layer.media_type in mt.GZIP_LAYER_TYPES:
            out.append(with_ztoc(clean, z))
        else:
            out.append(clean)
    return out


def soci_layers(store: object, manifest: Manifest) -> list[Descriptor]:
    """*manifest*'s layers, with zTOCs attached where the image (in a registry) has a SOCI index."""
    from lazypull.registry.repository import RegistryStore
    from lazypull.soci.create import image_manifest

    if not isinstance(store, RegistryStore) or all(is_lazy(x) for x in manifest.layers):
        return list(manifest.layers)
    subject, _ = image_manifest(store)
    return with_soci(manifest.layers, soci_ztocs(store.client, store.ref, subject.digest, manifest.annotations))
