"""Which layer a Prepare is about, from the labels containerd's clients attach.

Two label sets exist: the reference client's (``ctr-remote image rpull``) and
containerd's CRI plugin's (Kubernetes). Either gives the image reference and the
layer digest; the layer's descriptor (size, TOC digest annotation) comes from the
image manifest in the registry.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from lazypull.errors import LazypullError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor, Index, Manifest, host_platform, is_index
from lazypull.registry.client import RegistryClient
from lazypull.registry.reference import Reference

log = logging.getLogger(__name__)


class NotRemote(LazypullError):
    """This layer cannot be mounted lazily (the reason is the message); pull it normally."""


@dataclass(frozen=True)
class RemoteLayer:
    ref: Reference
    layer: Descriptor
    image_layers: tuple[Descriptor, ...] = ()  # every layer of the image, for mounting ahead


def target_of(labels: dict[str, str]) -> tuple[str, str, str | None, tuple[str, ...]] | None:
    """(image ref, layer digest, manifest digest, image layers) from either label set."""
    ref = labels.get(mt.LABEL_STARGZ_REFERENCE) or labels.get(mt.LABEL_CRI_IMAGE_REF)
    digest = labels.get(mt.LABEL_STARGZ_DIGEST) or labels.get(mt.LABEL_CRI_LAYER_DIGEST)
    if not ref or not digest:
        return None
    layers = labels.get(mt.LABEL_STARGZ_LAYERS) or labels.get(mt.LABEL_CRI_IMAGE_LAYERS) or ""
    return ref, digest, labels.get(mt.LABEL_CRI_MANIFEST_DIGEST), tuple(x for x in layers.split(",") if x)


class LayerResolver:
    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self._manifests: dict[str, Manifest] = {}
        self._lock = threading.Lock()

    def resolve(self, labels: dict[str, str]) -> RemoteLayer:
        t = target_of(labels)
        if t is None:
            raise NotRemote("no image reference/layer labels (pulled without a lazy-pull client?)")
        ref_text, digest, manifest_digest, _layers = t
        if not all(digestlib.is_valid(d) for d in (digest, manifest_digest or digest)):
            raise NotRemote(f"malformed digest in the snapshot labels ({digest[:100]!r}, {manifest_digest!r:.100})")
        try:
            ref = Reference.parse(ref_text)
        except LazypullError as e:
            raise NotRemote(str(e)) from None
        manifest = self._manifest(ref, manifest_digest)
        for layer in manifest.layers:
            if layer.digest == digest:
                if mt.ANNOTATION_TOC_DIGEST not in layer.annotations:
                    raise NotRemote(f"layer {digest} of {ref} has no TOC digest annotation (not eStargz)")
                return RemoteLayer(ref, layer, tuple(manifest.layers))
        raise NotRemote(f"layer {digest} is not in the manifest of {ref}")

    def _manifest(self, ref: Reference, manifest_digest: str | None) -> Manifest:
        key = f"{ref}@{manifest_digest or ''}"
        with self._lock:
            m = self._manifests.get(key)
        if m is not None:
            return m
        try:
            target = ref.with_digest(manifest_digest) if manifest_digest else ref
            data, media_type, _dg = self.client.get_manifest(target)
            if is_index(media_type):
                d = Index.parse(data, media_type).select(host_platform())
                data, media_type, _dg = self.client.get_manifest(ref.with_digest(d.digest))
            m = Manifest.parse(data, media_type)
        except LazypullError as e:
            raise NotRemote(f"cannot read the manifest of {ref}: {e}") from None
        with self._lock:
            self._manifests[key] = m
        return m
