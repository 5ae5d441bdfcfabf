"""Find the zTOCs of an image's layers: what the mount paths ask before falling back to a pull.

Trust: the SOCI index is listed by the image manifest's digest (referrers API or tag),
fetched by its own digest (verified) and must name that manifest as its subject; each
zTOC is then fetched by the digest the index gives (verified when the layer mounts), and
each span by the zTOC's digests. Anything missing or malformed means "no SOCI": the layer
is pulled normally.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from lazypull.errors import LazypullError
from lazypull.format.soci.dispatch import is_lazy, with_ztoc
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor, Manifest
from lazypull.registry.client import RegistryClient
from lazypull.registry.reference import Reference
from lazypull.registry.referrers import list_referrers
from lazypull.soci.index import SociIndex

log = logging.getLogger(__name__)

_cache: OrderedDict[tuple[str, str, str], tuple[float, dict[str, Descriptor]]] = OrderedDict()
_lock = threading.Lock()
TTL_SEC = 60.0  # an index pushed (or removed) later is seen within a minute


def soci_ztocs(client: RegistryClient, ref: Reference, manifest_digest: str) -> dict[str, Descriptor]:
    """{layer digest: zTOC descriptor} from the newest SOCI index of the image manifest
    *manifest_digest* ({} when it has none). Cached per manifest."""
    key = (ref.registry, ref.repository, manifest_digest)
    with _lock:
        hit = _cache.get(key)
    if hit is not None and time.monotonic() - hit[0] < TTL_SEC:
        return hit[1]
    found: dict[str, Descriptor] = {}
    try:
        indexes = list_referrers(client, ref, manifest_digest, mt.SOCI_INDEX_ARTIFACT_TYPE)
        for desc in reversed(indexes):  # the tag schema appends: newest last
            data, _mt, _dg = client.get_manifest(ref.with_digest(desc.digest))
            index = SociIndex.parse(data)
            if index.subject.digest != manifest_digest:
                log.warning("SOCI index %s names another subject; ignored", desc.digest)
                continue
            for z in index.ztocs:
                layer = z.annotations.get(mt.ANNOTATION_SOCI_LAYER_DIGEST)
                if layer:
                    found[layer] = Descriptor(z.media_type, z.digest, z.size)
            log.info("using SOCI index %s for %s (%d zTOCs)", desc.digest, ref, len(found))
            break
    except LazypullError as e:
        log.warning("no usable SOCI index for %s@%s: %s", ref, manifest_digest, e)
        found = {}
    with _lock:
        _cache[key] = (time.monotonic(), found)
        _cache.move_to_end(key)
        while len(_cache) > 64:
            _cache.popitem(last=False)
    return found


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
    return with_soci(manifest.layers, soci_ztocs(store.client, store.ref, subject.digest))
