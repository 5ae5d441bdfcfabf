"""OCI referrers: artifacts whose manifest names an image as its ``subject``.

Registries with the referrers API (distribution spec 1.1) list them at
``GET /v2/<name>/referrers/<digest>`` and index them by themselves when a manifest with
a subject is pushed (they answer with an ``OCI-Subject`` header). Older registries
(distribution 2.8) have neither: clients then keep the list themselves, as an image
index tagged ``<alg>-<hex>`` of the subject's digest (the referrers tag schema).
Both are read, and written where needed.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from lazypull.errors import LazypullError, RegistryError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor
from lazypull.registry.client import NotFoundError, RegistryClient
from lazypull.registry.reference import Reference

log = logging.getLogger(__name__)

MAX_INDEX_BYTES = 4 << 20


def tag_for(subject_digest: str) -> str:
    """The referrers tag schema's tag for a subject digest: ``sha256-<hex>``."""
    algo, _, hexd = digestlib.validate(subject_digest).partition(":")
    return f"{algo}-{hexd}"


def _parse_index(data: bytes, what: str) -> list[Descriptor]:
    try:
        obj = json.loads(data)
        return [Descriptor.from_json(d) for d in obj.get("manifests") or []]
    except (ValueError, AttributeError, TypeError, LazypullError) as e:
        raise RegistryError(f"{what} is not a valid image index: {e}") from None


def _index_bytes(descs: list[Descriptor]) -> bytes:
    obj: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [d.to_json() for d in descs]}
    return json.dumps(obj, separators=(",", ":")).encode()


def _api(client: RegistryClient, ref: Reference, subject_digest: str) -> list[Descriptor] | None:
    """The referrers API's answer, or None when the registry has no such API."""
    try:
        resp = client.request(
            ref, "GET", f"referrers/{digestlib.validate(subject_digest)}", headers={"Accept": mt.OCI_INDEX}
        )
    except NotFoundError:
        return None
    ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
    if ctype != mt.OCI_INDEX:
        return None
    return _parse_index(resp.data[: MAX_INDEX_BYTES + 1], f"referrers of {subject_digest}")


def _tag_index(client: RegistryClient, ref: Reference, subject_digest: str) -> list[Descriptor]:
    try:
        data, _mt, _dg = client.get_manifest(Reference(ref.registry, ref.repository, tag_for(subject_digest)))
    except NotFoundError:
        return []
    return _parse_index(data, f"referrers tag {tag_for(subject_digest)}")


def list_referrers(
    client: RegistryClient, ref: Reference, subject_digest: str, artifact_type: str | None = None
) -> list[Descriptor]:
    """Descriptors of the manifests that refer to *subject_digest* (optionally of one type)."""
    found = _api(client, ref, subject_digest)
    if found is None:
        found = _tag_index(client, ref, subject_digest)
    if artifact_type:
        found = [d for d in found if d.extra.get("artifactType") == artifact_type]
    return found


def push_referrer(client: RegistryClient, ref: Reference, data: bytes, desc: Descriptor, subject_digest: str) -> str:
    """Push the manifest *data* (whose subject is *subject_digest*) and make it listed.

    Returns "api" when the registry indexed it itself, "tag" when the referrers tag was
    updated."""
    resp = client.request(
        ref,
        "PUT",
        f"manifests/{desc.digest}",
        scope="pull,push",
        headers={"Content-Type": desc.media_type},
        body=data,
        ok=(201, 200),
    )
    if resp.headers.get("OCI-Subject"):
        return "api"
    entries = [d for d in _tag_index(client, ref, subject_digest) if d.digest != desc.digest]
    entries.append(desc)
    client.put_manifest(ref, _index_bytes(entries), mt.OCI_INDEX, tag=tag_for(subject_digest))
    return "tag"


def remove_referrer(client: RegistryClient, ref: Reference, subject_digest: str, digest: str) -> None:
    """Delete the referrer manifest *digest* and drop it from the referrers tag, if any."""
    entries = _tag_index(client, ref, subject_digest)
    kept = [d for d in entries if d.digest != digest]
    if len(kept) != len(entries):
        client.put_manifest(ref, _index_bytes(kept), mt.OCI_INDEX, tag=tag_for(subject_digest))
    try:
        path = f"manifests/{digestlib.validate(digest)}"
        client.request(ref, "DELETE", path, scope="pull,push,delete", ok=(202, 200))
    except NotFoundError:
        log.info("referrer %s was already gone from %s", digest, ref)
