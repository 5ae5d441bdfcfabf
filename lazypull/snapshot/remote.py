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
from lazypull.format.soci.dispatch import is_lazy
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor, Index, Manifest, host_platform, is_index
from lazypull.registry.client import RegistryClient
from lazypull.registry.reference import Reference
from lazypull.soci.find import soci_ztocs, with_soci

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
        self._digests: dict[str, str] = {}  # manifest digests, by the same keys (SOCI lookups)
        self._lock = threading.Lock()

    def resolve(self, labels: dict[str, str]) -> RemoteLayer:
        t = target_of(labels)
        if t is None:
            raise NotRemote("no image reference/layer labels (pulled without a lazy-pull client?)")
        ref_text, digest, manifest_digest, _layers = t
        try:
            ref = Reference.parse(ref_text)
        except LazypullError as e:
            raise NotRemote(str(e)) from None
        manifest = self._manifest(ref, manifest_digest)
        layers = manifest.layers
        if not all(mt.ANNOTATION_TOC_DIGEST in x.annotations for x in layers):  # SOCI for the others
            layers = with_soci(layers, soci_ztocs(self.client, ref, self._digests[f"{ref}@{manifest_digest or ''}"]))
        for layer in layers:
            if layer.digest == digest:
                if not is_lazy(layer):
                    raise NotRemote(f"layer {digest} of {ref} is neither eStargz nor indexed by a SOCI zTOC")
                return RemoteLayer(ref, layer, tuple(layers))
        raise NotRemote(f"layer {digest} is not in the manifest of {ref}")

    def _manifest(self, ref: Reference, manifest_digest: str | None) -> Manifest:
        key = f"{ref}@{manifest_digest or ''}"
        with self._lock:
            m = self._manifests.get(key)
        if m is not None:
            return m
        try:
            target = ref.with_digest(manifest_digest) if manifest_digest else ref
            data, media_type, dg = self.client.get_manifest(target)
            if is_index(media_type):
                d = Index.parse(data, media_type).select(host_platform())
                data, media_type, dg = self.client.get_manifest(ref.with_digest(d.digest))
            m = Manifest.parse(data, media_type)
        except LazypullError as e:
            raise NotRemote(f"cannot read the manifest of {ref}: {e}") from None
        with self._lock:
            self._manifests[key] = m
            self._digests[key] = dg
        return m
