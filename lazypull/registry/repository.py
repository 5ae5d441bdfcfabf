"""A registry repository as an :class:`ImageStore` (what ``convert``/``copy`` speak)."""

from __future__ import annotations

from typing import BinaryIO

from lazypull.oci.store import ImageStore, VerifyingReader
from lazypull.oci.types import Descriptor, Index, Manifest, is_foreign_layer, is_index, is_manifest
from lazypull.registry.blobsource import RegistryBlobSource
from lazypull.registry.client import RegistryClient
from lazypull.registry.options import RegistryOptions
from lazypull.registry.reference import Reference

_SHARED: dict[str, RegistryClient] = {}


def client_for(opts: RegistryOptions | None) -> RegistryClient:
    """One client per distinct set of options, so pools and tokens are shared within a command."""
    import json

    key = json.dumps((opts or RegistryOptions()).to_json(), sort_keys=True)
    c = _SHARED.get(key)
    if c is None:
        c = _SHARED[key] = RegistryClient(opts)
    return c


class RegistryStore(ImageStore):
    def __init__(self, client: RegistryClient, ref: Reference) -> None:
        self.client = client
        self.ref = ref
        self.name = str(ref)
        self.tag = ref.tag
        self._docs: dict[str, bytes] = {}  # manifests already fetched, by digest

    @classmethod
    def open(cls, ref: str, opts: RegistryOptions | None = None, *, for_push: bool = False) -> RegistryStore:
        return cls(client_for(opts), Reference.parse(ref))

    def resolve(self) -> Descriptor:
        data, media_type, dg = self.client.get_manifest(self.ref)
        self._docs[dg] = data
        return Descriptor(media_type, dg, len(data))

    def fetch(self, desc: Descriptor, limit: int = 4 << 20) -> bytes:
        """Manifests and indexes come from the manifests endpoint; other blobs from blobs."""
        if desc.digest in self._docs:
            return self._docs[desc.digest]
        if is_index(desc.media_type) or is_manifest(desc.media_type):
            data, _mt, _dg = self.client.get_manifest(self.ref.with_digest(desc.digest))
            self._docs[desc.digest] = data
            return data
        return super().fetch(desc, limit)

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self.client.open_blob(self.ref, desc)

    def blob_source(self, desc: Descriptor) -> RegistryBlobSource:
        return RegistryBlobSource(self.client, self.ref, desc)

    def has_blob(self, desc: Descriptor) -> bool:
        return self.client.blob_exists(self.ref, desc.digest) is not None

    def push_blob(self, desc: Descriptor, stream: BinaryIO) -> None:
        self.client.push_blob(self.ref, desc, stream)

    def mount_blob(self, desc: Descriptor, from_repo: str, stream: BinaryIO) -> None:
        """Cross-repository mount from *from_repo* (same registry); uploads *stream* if refused."""
        self.client.push_blob(self.ref, desc, stream, mount_from=from_repo)

    def copy_blob_from(self, src: RegistryStore, desc: Descriptor) -> None:
        """*src*'s blob *desc* here (verified), mounted across repositories of one registry."""
        if self.has_blob(desc):
            return
        with VerifyingReader(src.open_blob(desc), desc) as stream:
            if src.ref.registry == self.ref.registry and src.ref.repository != self.ref.repository:
                self.mount_blob(desc, src.ref.repository, stream)  # type: ignore[arg-type]
            else:
                self.push_blob(desc, stream)  # type: ignore[arg-type]

    def copy_manifest_from(self, src: RegistryStore, desc: Descriptor) -> None:
        """*src*'s manifest or index *desc* here with everything under it, blobs first."""
        data = src.fetch(desc)
        if is_index(desc.media_type):
            for d in Index.parse(data, desc.media_type).manifests:
                self.copy_manifest_from(src, d)
        else:
            m = Manifest.parse(data, desc.media_type)
            for blob in [m.config, *m.layers]:
                if not is_foreign_layer(blob.media_type):
                    self.copy_blob_from(src, blob)
        self.push_manifest(desc, data)

    def push_manifest(self, desc: Descriptor, data: bytes, tag: str | None = None) -> None:
        self.client.put_manifest(self.ref, data, desc.media_type, tag=tag)
