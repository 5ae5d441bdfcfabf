"""From an image reference's root descriptor to the image manifest(s) it means.

Roots come in several shapes, all of which other tools write: a manifest (OCI or Docker
schema2), an index or Docker manifest list with one manifest per platform, an index whose
entries are themselves indexes (``ctr export`` of a converted image), and an index whose
only manifest has no ``platform`` (the image, whatever the host). Indexes are followed to
a bounded depth; a manifest without a platform is matched by its config's os/arch.
"""

from __future__ import annotations

from lazypull.errors import OCIError
from lazypull.oci import mediatypes as mt
from lazypull.oci.store import ImageStore
from lazypull.oci.types import Descriptor, ImageConfig, Index, Manifest, Platform, host_platform, is_index

MAX_DEPTH = 4  # indexes inside indexes; more is a loop or a hostile document


def select_manifest(store: ImageStore, desc: Descriptor, platform: Platform | None = None) -> Descriptor:
    """The image manifest for *platform* (the host's by default) under *desc*."""
    want = platform or host_platform()
    found = _select(store, desc, want, 0)
    if found is None:
        have = ", ".join(sorted(set(_platforms(store, desc, 0)))) or "none"
        raise OCIError(f"no manifest for platform {want} (index has: {have})")
    return found


def image_manifests(
    store: ImageStore, desc: Descriptor, platform: Platform | None = None, all_platforms: bool = False
) -> list[Descriptor]:
    """The chosen image manifest, or with *all_platforms* every image manifest under *desc*."""
    if not all_platforms:
        return [select_manifest(store, desc, platform)]
    out: list[Descriptor] = []
    _collect(store, desc, out, 0)
    return out


def _select(store: ImageStore, desc: Descriptor, want: Platform, depth: int) -> Descriptor | None:
    if not is_index(desc.media_type):
        if desc.media_type not in mt.MANIFEST_TYPES:
            return None
        if depth == 0:
            return desc
        if desc.platform is not None:
            return desc if want.matches(desc.platform) else None
        return desc if _config_matches(store, desc, want) else None
    if depth >= MAX_DEPTH:
        raise OCIError(f"{desc.digest}: indexes nested more than {MAX_DEPTH} deep")
    index = Index.parse(store.fetch(desc), desc.media_type)
    # Entries that say their platform first, then the ones that do not (nested indexes,
    # single images exported without one).
    for d in index.manifests:
        image = d.media_type in mt.MANIFEST_TYPES and not d.is_soci_index
        if image and d.platform is not None and want.matches(d.platform):
            return d
    for d in index.manifests:
        if d.platform is None or is_index(d.media_type):
            if d.platform is not None and not want.matches(d.platform):
                continue
            found = _select(store, d, want, depth + 1)
            if found is not None:
                return found
    return None


def _config_matches(store: ImageStore, desc: Descriptor, want: Platform) -> bool:
    """A manifest with no platform in its index: its config says (no os/arch: any)."""
    m = Manifest.parse(store.fetch(desc), desc.media_type)
    if m.config.media_type not in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
        return False  # an artifact (signature, attestation), not an image
    got = ImageConfig.parse(store.fetch(m.config)).platform
    if not got.os or not got.architecture:
        return True
    return want.matches(got)


def _platforms(store: ImageStore, desc: Descriptor, depth: int) -> list[str]:
    if not is_index(desc.media_type) or depth >= MAX_DEPTH:
        return [str(desc.platform)] if desc.platform else []
    index = Index.parse(store.fetch(desc), desc.media_type)
    out: list[str] = []
    for d in index.manifests:
        out += [str(d.platform)] if d.platform else _platforms(store, d, depth + 1)
    return out


def _collect(store: ImageStore, desc: Descriptor, out: list[Descriptor], depth: int) -> None:
    if not is_index(desc.media_type):
        if desc.media_type in mt.MANIFEST_TYPES and desc not in out and not desc.is_soci_index:
            out.append(desc)
        return
    if depth >= MAX_DEPTH:
        raise OCIError(f"{desc.digest}: indexes nested more than {MAX_DEPTH} deep")
    for d in Index.parse(store.fetch(desc), desc.media_type).manifests:
        _collect(store, d, out, depth + 1)
