"""SOCI index manifest v2: ``soci convert``'s "SOCI-enabled" image, written here.

Why v2: a v1 index is a referrer anyone with push rights can add to or remove from an
image, changing how it starts; v2 binds one index to one image that is copied with it,
and soci-snapshotter v0.10+ reads only v2 by default (v1 behind its
``[pull_modes.soci_v1]`` setting). The layout, as published by soci-snapshotter in
``docs/soci-index-manifest-v2.md`` (the model and the migration), ``soci/soci_index.go``
(media types, annotation names, the index's serialisation) and ``soci/soci_convert.go``
(how an image becomes SOCI-enabled):

- The SOCI index is built as in v1 (:mod:`lazypull.soci.index`: an OCI image manifest,
  zTOC blobs as its layers annotated with the image layer's digest and media type), but
  its ``{}`` config is typed ``application/vnd.amazon.soci.index.v2+json`` and it has no
  ``subject`` (nothing lists it as a referrer) nor an ``artifactType`` field of its own.
- The image manifest gains the annotation ``com.amazon.soci.index-digest`` (the SOCI
  index's digest) and is retyped as an OCI manifest with an OCI config descriptor (soci
  avoids mixing Docker and OCI types); config and layer blobs are untouched, but the
  manifest's digest changes, so this is a new image.
- The new image is an OCI image index (made for a single-manifest image, the platform
  taken from the config): the annotated manifest's descriptor (with the manifest's
  annotations and its platform) replaces the original, and after it comes the SOCI
  index's descriptor: typed as an OCI manifest, ``artifactType``
  ``application/vnd.amazon.soci.index.v2+json``, the same platform, annotated
  ``com.amazon.soci.image-manifest-digest`` with the annotated manifest's digest. A
  runtime that takes the first manifest for its platform gets the image; an earlier SOCI
  index for the platform is replaced. The SOCI index is a manifest of the repository,
  fetched by digest.

Reading needs only the annotation: the image manifest, verified by the digest the runtime
chose, names the index by digest (:mod:`lazypull.soci.find`). soci-snapshotter's
``fs/fs.go`` looks, in order, for an index digest the user gave, the manifest's
annotation (v2) and the referrers (v1); lazypull has no first step, and when the v2 index
cannot be used it tries v1 before pulling in full.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lazypull.errors import LazypullError
from lazypull.format.soci.build import DEFAULT_SPAN_SIZE
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor, ImageConfig, Index, Manifest, Platform, is_index
from lazypull.registry.repository import RegistryStore
from lazypull.soci.create import DEFAULT_MIN_LAYER_SIZE, LayerResult, build_ztocs, image_manifest, push_empty_config
from lazypull.soci.index import SociIndex


@dataclass
class ConvertResult:
    source: Descriptor  # the original image manifest
    image: Descriptor  # the annotated image manifest (same config and layers)
    index: Descriptor  # the SOCI index, as listed in the image index
    root: Descriptor  # the SOCI-enabled image (an OCI image index), pushed to the destination
    layers: list[LayerResult] = field(default_factory=list)


def convert_image(
    src: RegistryStore,
    dst: RegistryStore,
    *,
    span_size: int = DEFAULT_SPAN_SIZE,
    min_layer_size: int = DEFAULT_MIN_LAYER_SIZE,
    platform: Platform | None = None,
    progress: Callable[[LayerResult], None] | None = None,
) -> ConvertResult:
    """Write to *dst* the SOCI-enabled image of *src*'s manifest for *platform* (the
    host's): zTOCs and a v2 SOCI index for its gzip layers, the manifest annotated with
    the index, an image index holding both. Other platforms of *src* are copied as they are."""
    source, manifest = image_manifest(src, platform)
    plat = source.platform or ImageConfig.parse(src.fetch(manifest.config)).platform
    for blob in (manifest.config, *manifest.layers):
        dst.copy_blob_from(src, blob)
    layers, ztocs = build_ztocs(
        src, dst, manifest, span_size=span_size, min_layer_size=min_layer_size, progress=progress
    )
    push_empty_config(dst, mt.SOCI_INDEX_V2_ARTIFACT_TYPE)
    soci = SociIndex(None, ztocs, artifact_type=mt.SOCI_INDEX_V2_ARTIFACT_TYPE)
    soci_data = soci.to_bytes()
    index_desc = Descriptor(mt.OCI_MANIFEST, digestlib.of_bytes(soci_data), len(soci_data))
    dst.push_manifest(index_desc, soci_data)

    cfg = manifest.config
    annotated = Manifest(
        Descriptor(mt.OCI_CONFIG, cfg.digest, cfg.size, cfg.annotations, cfg.platform, cfg.urls, cfg.extra),
        list(manifest.layers),
        mt.OCI_MANIFEST,
        {**manifest.annotations, mt.ANNOTATION_SOCI_INDEX_DIGEST: index_desc.digest},
        dict(manifest.extra),
    )
    data = annotated.to_bytes()
    image = Descriptor(mt.OCI_MANIFEST, digestlib.of_bytes(data), len(data), dict(annotated.annotations), plat)
    dst.push_manifest(image, data)
    listed = Descriptor(
        mt.OCI_MANIFEST,
        index_desc.digest,
        index_desc.size,
        {mt.ANNOTATION_SOCI_IMAGE_MANIFEST_DIGEST: image.digest},
        plat,
        extra={"artifactType": mt.SOCI_INDEX_V2_ARTIFACT_TYPE},
    )
    root_index = Index(_entries(src, dst, source, image, listed))
    root_data = root_index.to_bytes()
    root = Descriptor(mt.OCI_INDEX, digestlib.of_bytes(root_data), len(root_data))
    dst.push_manifest(root, root_data, tag=dst.ref.tag if not dst.ref.digest else None)
    return ConvertResult(source, image, listed, root, layers)


def _entries(
    src: RegistryStore, dst: RegistryStore, source: Descriptor, image: Descriptor, listed: Descriptor
) -> list[Descriptor]:
    """The image index's manifests: *src*'s own (an index's, others copied as they are) with
    *source* replaced by *image*, then the SOCI index (one per platform: an older one goes)."""
    root = src.resolve()
    if not is_index(root.media_type):
        return [image, listed]
    out: list[Descriptor] = []
    for d in Index.parse(src.fetch(root), root.media_type).manifests:
        if d.digest == source.digest:
            out.append(image)
        elif d.is_soci_index and d.platform is not None and image.platform is not None:
            if not d.platform.matches(image.platform):
                dst.copy_manifest_from(src, d)
                out.append(d)
        else:
            dst.copy_manifest_from(src, d)
            out.append(d)
    if image not in out:
        raise LazypullError(f"{source.digest} is not listed in {src.name}'s image index")
    return [*out, listed]
