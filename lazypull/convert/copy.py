"""Copy images between stores (layouts, registries), blobs first, manifests last."""

from __future__ import annotations

import logging
from collections.abc import Callable

from lazypull.oci.resolve import select_manifest
from lazypull.oci.store import ImageStore, VerifyingReader
from lazypull.oci.types import Descriptor, Index, Manifest, Platform, is_foreign_layer, is_index

log = logging.getLogger(__name__)


def copy_image(
    src: ImageStore,
    dst: ImageStore,
    *,
    tag: str | None = None,
    platform: Platform | None = None,
    all_platforms: bool = True,
    progress: Callable[[str, Descriptor, int, int], None] | None = None,
) -> Descriptor:
    """Copy the image *src* resolves to; returns the pushed root descriptor."""
    root = src.resolve()
    if is_index(root.media_type):
        index = Index.parse(src.fetch(root), root.media_type)
        if not all_platforms:
            chosen = select_manifest(src, root, platform)
            _copy_manifest(src, dst, chosen, progress)
            dst.push_manifest(chosen, src.fetch(chosen), tag=tag)
            return chosen
        for d in index.manifests:
            _copy_manifest(src, dst, d, progress)
            dst.push_manifest(d, src.fetch(d))
    else:
        _copy_manifest(src, dst, root, progress)
    dst.push_manifest(root, src.fetch(root), tag=tag)
    return root


def _copy_manifest(
    src: ImageStore, dst: ImageStore, desc: Descriptor, progress: Callable[[str, Descriptor, int, int], None] | None
) -> None:
    if is_index(desc.media_type):
        index = Index.parse(src.fetch(desc), desc.media_type)
        for d in index.manifests:
            _copy_manifest(src, dst, d, progress)
            dst.push_manifest(d, src.fetch(d))
        return
    m = Manifest.parse(src.fetch(desc), desc.media_type)
    for blob in [m.config, *m.layers]:
        if is_foreign_layer(blob.media_type):
            log.warning("layer %s is non-distributable: not copied (the manifest keeps its descriptor)", blob.digest)
            continue
        copy_blob(src, dst, blob)
        if progress:
            progress("copied", blob, blob.size, blob.size)


def copy_blob(src: ImageStore, dst: ImageStore, desc: Descriptor) -> None:
    if dst.has_blob(desc):
        return
    from lazypull.registry.repository import RegistryStore

    with VerifyingReader(src.open_blob(desc), desc) as stream:
        if (
            isinstance(src, RegistryStore)
            and isinstance(dst, RegistryStore)
            and src.ref.registry == dst.ref.registry
            and src.ref.repository != dst.ref.repository
        ):
            dst.mount_blob(desc, src.ref.repository, stream)  # type: ignore[arg-type]
        else:
            dst.push_blob(desc, stream)  # type: ignore[arg-type]
