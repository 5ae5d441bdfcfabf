"""Which layer a Prepare is about, from the labels containerd's clients attach.

Two label sets exist: the reference client's (``ctr-remote image rpull``) and
containerd's CRI plugin's (Kubernetes). Either gives the image reference and the
layer digest; the layer's descriptor (size, TOC digest annotation) comes from the
image manifest in the registry.

Prepare blocks containerd while it resolves, so a lookup has one deadline
(``[resolver] timeout_sec``) covering index, manifest, retries and bodies; when the
registry cannot answer, the failure is remembered per image for ``failure_ttl_sec`` so the
image's other layers fall back to a normal pull at once instead of each waiting again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Protocol

from lazypull.errors import LazypullError
from lazypull.format.soci.dispatch import is_lazy
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor, Index, Manifest, host_platform, is_index
from lazypull.registry.client import RegistryClient
from lazypull.registry.credentials import Credential
from lazypull.registry.deadline import deadline_scope
from lazypull.registry.reference import Reference
from lazypull.snapshot import fallback
from lazypull.soci.find import soci_ztocs, with_soci

log = logging.getLogger(__name__)


class NotRemote(LazypullError):
    """This layer cannot be mounted lazily (the reason is the message); pull it normally.

    *reason* is the fallback's label in ``lazypull_fallback_total`` (:mod:`.fallback`)."""

    def __init__(self, message: str, reason: str = fallback.REGISTRY) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RemoteLayer:
    ref: Reference
    layer: Descriptor
    image_layers: tuple[Descriptor, ...] = ()  # every layer of the image, for mounting ahead
    credential: Credential | None = field(default=None, repr=False, compare=False)  # CRI keychain or providers
    manifest_digest: str = ""  # the image manifest's (this platform's), as read from the registry


class CredentialSource(Protocol):
    def get(self, ref: Reference) -> Credential | None: ...


def target_of(labels: dict[str, str]) -> tuple[str, str, str | None, tuple[str, ...]] | None:
    """(image ref, layer digest, manifest digest, image layers) from either label set."""
    ref = labels.get(mt.LABEL_STARGZ_REFERENCE) or labels.get(mt.LABEL_CRI_IMAGE_REF)
    digest = labels.get(mt.LABEL_STARGZ_DIGEST) or labels.get(mt.LABEL_CRI_LAYER_DIGEST)
    if not ref or not digest:
        return None
    layers = labels.get(mt.LABEL_STARGZ_LAYERS) or labels.get(mt.LABEL_CRI_IMAGE_LAYERS) or ""
    return ref, digest, labels.get(mt.LABEL_CRI_MANIFEST_DIGEST), tuple(x for x in layers.split(",") if x)


RESOLVE_TIMEOUT = 10.0
FAILURE_TTL = 30.0


class LayerResolver:
    def __init__(
        self,
        client: RegistryClient,
        keychain: CredentialSource | None = None,
        *,
        timeout: float = RESOLVE_TIMEOUT,
        failure_ttl: float = FAILURE_TTL,
    ) -> None:
        self.client = client
        self.keychain = keychain  # per image (CRI keychain, credential providers), ahead of the node's own
        self.timeout = timeout
        self.failure_ttl = failure_ttl
        self._clients: OrderedDict[Credential, RegistryClient] = OrderedDict()
        self._manifests: dict[str, Manifest] = {}
        self._digests: dict[str, str] = {}  # manifest digests, by the same keys (SOCI lookups)
        self._failures: dict[str, tuple[float, str, str]] = {}  # image -> (until, reason, its label)
        self._lock = threading.Lock()

    def client_for(self, ref: Reference) -> RegistryClient:
        """A client with the keychain's credentials for *ref* (one per credential: tokens refresh there)."""
        cred = self.keychain.get(ref) if self.keychain is not None else None
        if cred is None:
            return self.client
        with self._lock:
            c = self._clients.get(cred)
            if c is None:
                opts = replace(self.client.opts, credential=cred)
                c = self._clients[cred] = RegistryClient(opts, hosts=self.client.hosts, transport=self.client.transport)
                while len(self._clients) > 64:
                    self._clients.popitem(last=False)
            self._clients.move_to_end(cred)
            return c

    def resolve(self, labels: dict[str, str]) -> RemoteLayer:
        """The layer the labels name, mountable lazily; else :class:`NotRemote` (counted: the
        caller pulls the layer in full)."""
        try:
            return self._resolve(labels)
        except NotRemote as e:
            fallback.count_fallback(e.reason)
            raise

    def _resolve(self, labels: dict[str, str]) -> RemoteLayer:
        t = target_of(labels)
        if t is None:
            raise NotRemote("no image reference/layer labels (pulled without a lazy-pull client?)", fallback.NO_LABELS)
        ref_text, digest, manifest_digest, _layers = t
        if not all(digestlib.is_valid(d) for d in (digest, manifest_digest or digest)):
            raise NotRemote(
                f"malformed digest in the snapshot labels ({digest[:100]!r}, {manifest_digest!r:.100})",
                fallback.BAD_LABELS,
            )
        try:
            ref = Reference.parse(ref_text)
        except LazypullError as e:
            raise NotRemote(str(e), fallback.BAD_LABELS) from None
        manifest = self.manifest(ref, manifest_digest)
        layers = manifest.layers
        with self._lock:
            subject = self._digests.get(f"{ref}@{manifest_digest or ''}", "")
        soci = subject or mt.ANNOTATION_SOCI_INDEX_DIGEST in manifest.annotations  # v1 referrers, v2 annotation
        if soci and not all(mt.ANNOTATION_TOC_DIGEST in x.annotations for x in layers):  # SOCI for the others
            with deadline_scope(self.timeout):
                layers = with_soci(layers, soci_ztocs(self.client_for(ref), ref, subject, manifest.annotations))
        for layer in layers:
            if layer.digest == digest:
                if not is_lazy(layer):
                    raise NotRemote(
                        f"layer {digest} of {ref} is neither eStargz nor indexed by a SOCI zTOC", fallback.NOT_LAZY
                    )
                cred = self.keychain.get(ref) if self.keychain is not None else None
                return RemoteLayer(ref, layer, tuple(layers), cred, subject)
        raise NotRemote(f"layer {digest} is not in the manifest of {ref}", fallback.NOT_IN_MANIFEST)

    def remember_failure(self, labels: dict[str, str], reason: str, label: str = fallback.MOUNT_FAILED) -> None:
        """The layer of *labels* falls back to a normal pull (counted under *label*) and its
        image cannot be mounted lazily now (e.g. its layer's TOC did not arrive in time): its
        other layers fall back at once for ``failure_ttl`` seconds."""
        fallback.count_fallback(label)
        t = target_of(labels)
        if t is None or self.failure_ttl <= 0:
            return
        try:
            key = f"{Reference.parse(t[0])}@{t[2] or ''}"
        except LazypullError:
            return
        with self._lock:
            self._failures[key] = (time.monotonic() + self.failure_ttl, reason, label)

    def manifest(self, ref: Reference, manifest_digest: str | None = None) -> Manifest:
        """The image's manifest for this platform (cached per reference and digest; failures
        for ``failure_ttl``)."""
        key = f"{ref}@{manifest_digest or ''}"
        now = time.monotonic()
        with self._lock:
            m = self._manifests.get(key)
            failed = self._failures.get(key)
            if failed is not None and failed[0] <= now:
                del self._failures[key]
                failed = None
        if failed is not None:
            raise NotRemote(f"{failed[1]} (remembered for {self.failure_ttl:g}s)", failed[2])
        if m is not None:
            return m
        try:
            with deadline_scope(self.timeout):
                target = ref.with_digest(manifest_digest) if manifest_digest else ref
                client = self.client_for(ref)
                data, media_type, dg = client.get_manifest(target)
                if is_index(media_type):
                    d = Index.parse(data, media_type).select(host_platform())
                    data, media_type, dg = client.get_manifest(ref.with_digest(d.digest))
                m = Manifest.parse(data, media_type)
        except LazypullError as e:
            reason = f"cannot read the manifest of {ref}: {e}"
            label = fallback.reason_of(e)
            log.warning("%s; its layers fall back to a normal pull", reason)
            with self._lock:
                if len(self._failures) > 1024:  # a moment's memory per image, never unbounded
                    self._failures = {k: v for k, v in self._failures.items() if v[0] > time.monotonic()}
                if self.failure_ttl > 0:
                    self._failures[key] = (time.monotonic() + self.failure_ttl, reason, label)
            raise NotRemote(reason, label) from None
        with self._lock:
            self._manifests[key] = m
            self._digests[key] = dg
        return m
