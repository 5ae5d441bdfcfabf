"""Prefetch profiles in the registry, beside the image they describe.

A profile is an OCI artifact (``artifactType`` the profile's, the empty config, one layer:
the profile body) whose ``subject`` is the image manifest, listed with the referrers API or
the ``sha256-<hex>`` referrers tag exactly like a SOCI index: the image is never rewritten,
so its digest and signatures stay valid. Reading one checks what a registry could get wrong
or forge: the artifact's type and subject, the body's size, digest and bounds, and that the
body names the same image.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass

from lazypull.errors import LazypullError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor, Platform, dump_json
from lazypull.prefetch.profile import ARTIFACT_TYPE, MAX_BYTES, Profile, ProfileError, merge
from lazypull.registry.client import RegistryClient
from lazypull.registry.reference import Reference
from lazypull.registry.referrers import list_referrers, push_referrer, remove_referrer
from lazypull.registry.repository import RegistryStore
from lazypull.soci.create import image_manifest

EMPTY_CONFIG = b"{}"
MAX_MANIFEST_BYTES = 64 << 10
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_RUNS = "io.lazypull.prefetch.runs"
MAX_MERGED = 3  # a node applies the newest this many published profiles, merged


def _empty() -> Descriptor:
    return Descriptor(mt.OCI_EMPTY, digestlib.of_bytes(EMPTY_CONFIG), len(EMPTY_CONFIG))


@dataclass
class PushResult:
    image: Descriptor  # the subject
    profile: Descriptor  # the artifact manifest
    pushed_via: str  # "api" or "tag"
    replaced: list[str]  # profiles removed after this one was pushed (--merge-published)


def artifact(body: bytes, subject: Descriptor, runs: int) -> tuple[bytes, Descriptor]:
    """The artifact manifest carrying *body*, and its descriptor as the referrers list it."""
    ann = {
        ANNOTATION_CREATED: datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        ANNOTATION_RUNS: str(runs),
    }
    obj = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": _empty().to_json(),
        "layers": [{"mediaType": ARTIFACT_TYPE, "digest": digestlib.of_bytes(body), "size": len(body)}],
        "subject": Descriptor(subject.media_type, subject.digest, subject.size).to_json(),
        "annotations": ann,
    }
    data = dump_json(obj)
    return data, Descriptor(
        mt.OCI_MANIFEST, digestlib.of_bytes(data), len(data), annotations=ann, extra={"artifactType": ARTIFACT_TYPE}
    )


def list_profiles(client: RegistryClient, ref: Reference, subject_digest: str) -> list[Descriptor]:
    """The profile artifacts listed for the image manifest *subject_digest*, newest first."""
    found = list_referrers(client, ref, subject_digest, ARTIFACT_TYPE)
    return sorted(found, key=lambda d: d.annotations.get(ANNOTATION_CREATED, ""), reverse=True)


def fetch_profile(client: RegistryClient, ref: Reference, subject_digest: str, desc: Descriptor) -> Profile:
    """The profile of artifact *desc*, checked against the image it must describe."""
    if desc.size > MAX_MANIFEST_BYTES:
        raise ProfileError(f"profile artifact {desc.digest} is {desc.size} bytes, over {MAX_MANIFEST_BYTES}")
    data, _mt, _dg = client.get_manifest(ref.with_digest(desc.digest))
    digestlib.verify(data, desc.digest, what=f"profile artifact {desc.digest}")
    try:
        obj = json.loads(data)
        layer = Descriptor.from_json(obj["layers"][0])
        subject = Descriptor.from_json(obj["subject"])
        kind = obj.get("artifactType")
    except (ValueError, KeyError, IndexError, TypeError, LazypullError) as e:
        raise ProfileError(f"profile artifact {desc.digest} is malformed: {e}") from None
    if kind != ARTIFACT_TYPE or subject.digest != subject_digest:
        raise ProfileError(f"artifact {desc.digest} is not a prefetch profile of {subject_digest}")
    if layer.size > MAX_BYTES:
        raise ProfileError(f"profile {layer.digest} is {layer.size} bytes, over the {MAX_BYTES} byte limit")
    body = client.read_range(ref, layer.digest, 0, layer.size) if layer.size else b""
    digestlib.verify(body, layer.digest, what=f"profile {layer.digest}")
    profile = Profile.parse(body)
    if profile.image != subject_digest:
        raise ProfileError(f"profile {desc.digest} was recorded for {profile.image}, not {subject_digest}")
    return profile


def published_profile(
    client: RegistryClient, ref: Reference, subject_digest: str, newest: int = MAX_MERGED
) -> Profile | None:
    """The image's *newest* published profiles, merged; None when it has none. Raises on a
    registry that does not answer and on a bad profile (ProfileError, DigestMismatchError)."""
    found = list_profiles(client, ref, subject_digest)[:newest]
    if not found:
        return None
    return merge([fetch_profile(client, ref, subject_digest, d) for d in found])


def push_profile(
    store: RegistryStore, profile: Profile, platform: Platform | None = None, *, merge_published: bool = False
) -> PushResult:
    """Push *profile* as a referrer of the image; with *merge_published*, the image's
    published profiles are merged into it first and removed once it is listed."""
    subject, _ = image_manifest(store, platform)
    if profile.image != subject.digest:
        raise LazypullError(f"the profile was recorded for {profile.image}; {store.name} is {subject.digest}")
    old = list_profiles(store.client, store.ref, subject.digest) if merge_published else []
    if old:
        profile = merge([profile, *(fetch_profile(store.client, store.ref, subject.digest, d) for d in old)])
    body = profile.to_bytes()
    store.push_bytes(_empty(), EMPTY_CONFIG)
    store.push_bytes(Descriptor(ARTIFACT_TYPE, digestlib.of_bytes(body), len(body)), body)
    manifest, desc = artifact(body, subject, profile.runs)
    via = push_referrer(store.client, store.ref, manifest, desc, subject.digest)
    replaced = [d.digest for d in old if d.digest != desc.digest]
    for d in replaced:
        remove_referrer(store.client, store.ref, subject.digest, d)
    return PushResult(subject, desc, via, replaced)


def published(store: RegistryStore, platform: Platform | None = None) -> tuple[Descriptor, list[Descriptor]]:
    """(the image manifest, its profile artifacts, newest first)."""
    subject, _ = image_manifest(store, platform)
    return subject, list_profiles(store.client, store.ref, subject.digest)


def remove_profiles(store: RegistryStore, digest: str | None = None, platform: Platform | None = None) -> list[str]:
    """Delete the image's profile *digest* (every one when None); returns the digests removed."""
    subject, found = published(store, platform)
    targets = [d.digest for d in found if digest is None or d.digest == digest]
    if digest is not None and not targets:
        raise LazypullError(f"{digest} is not a prefetch profile of {store.name}")
    for t in targets:
        remove_referrer(store.client, store.ref, subject.digest, t)
    return targets
