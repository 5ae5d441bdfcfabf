"""What a manifest holds: an image, or an artifact whose layers are files (ModelPack, ORAS).

Images and artifacts share the manifest format; only the config's media type and the
``artifactType`` tell them apart. An artifact's layers are read as files: a raw layer is
one file at the path its annotation names, a tar layer is unpacked at the root as an image
layer is (ModelPack ``...tar``, ``tar+gzip``, ``tar+zstd``; an ORAS directory).
"""

from __future__ import annotations

import enum

from lazypull.errors import OCIError
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor, Manifest

IMAGE_CONFIGS = frozenset({mt.OCI_CONFIG, mt.DOCKER_CONFIG})


class Kind(enum.StrEnum):
    IMAGE = "image"
    MODELPACK = "modelpack"
    FILES = "files"  # ORAS: one blob per file, named by the title annotation


def artifact_type(manifest: Manifest) -> str:
    """The manifest's ``artifactType``, else its config's media type (the spec's fallback)."""
    at = manifest.extra.get("artifactType")
    return at if isinstance(at, str) and at else manifest.config.media_type


def kind_of(manifest: Manifest) -> Kind:
    """How to read *manifest*; raises OCIError (one line, naming the type) for anything else."""
    at = manifest.extra.get("artifactType")
    if mt.MODELPACK_MANIFEST in (at, manifest.config.media_type) or manifest.config.media_type == mt.MODELPACK_CONFIG:
        return Kind.MODELPACK
    if manifest.config.media_type in IMAGE_CONFIGS:  # an image, whatever artifactType it may carry
        return Kind.IMAGE
    if manifest.layers and all(mt.ANNOTATION_TITLE in d.annotations for d in manifest.layers):
        return Kind.FILES
    raise OCIError(
        f"unsupported artifact type {artifact_type(manifest)!r}: lazypull reads images, "
        "ModelPack models and ORAS file artifacts"
    )


def is_tar_layer(desc: Descriptor, kind: Kind) -> bool:
    """Whether an artifact layer is a tar archive unpacked at the root (else: one raw file)."""
    if kind == Kind.IMAGE:
        return True
    if kind == Kind.MODELPACK and desc.media_type.startswith(mt.MODELPACK_LAYER_PREFIX):
        return ".tar" in desc.media_type.rpartition(".v1")[2]
    if desc.annotations.get(mt.ANNOTATION_ORAS_UNPACK, "").lower() == "true" or desc.media_type == mt.OCI_LAYER_GZIP:
        return True  # an ORAS directory: flagged (oras-go), or by its media type (the oras Python SDK)
    if kind == Kind.MODELPACK and mt.ANNOTATION_MODELPACK_FILEPATH not in desc.annotations:
        return desc.media_type in mt.LAYER_TYPES  # a ModelPack tool's plain image layer
    return False


def file_path(desc: Descriptor) -> str:
    """Where a raw artifact layer's file sits in the view (normalised, never outside it)."""
    raw = desc.annotations.get(mt.ANNOTATION_MODELPACK_FILEPATH) or desc.annotations.get(mt.ANNOTATION_TITLE) or ""
    parts = [p for p in raw.split("/") if p not in ("", ".", "..")]
    path = "/".join(parts)
    if not path:
        raise OCIError(f"layer {desc.digest} ({desc.media_type}) names no file path")
    return path
