"""How a manifest is read: image, ModelPack or ORAS files, and where each layer's file goes."""

from __future__ import annotations

import pytest

from lazypull.errors import OCIError
from lazypull.oci import mediatypes as mt
from lazypull.oci.artifacts import Kind, file_path, is_tar_layer, kind_of
from lazypull.oci.types import Descriptor, Manifest

D = "sha256:" + "a" * 64


def manifest(config_type: str, layers: list[Descriptor], artifact_type: str | None = None) -> Manifest:
    extra = {"artifactType": artifact_type} if artifact_type else {}
    return Manifest(Descriptor(config_type, D, 2), layers, extra=extra)


def layer(media_type: str, **ann: str) -> Descriptor:
    return Descriptor(media_type, D, 10, dict(ann))


def test_kinds() -> None:
    assert kind_of(manifest(mt.OCI_CONFIG, [layer(mt.OCI_LAYER_GZIP)])) == Kind.IMAGE
    assert kind_of(manifest(mt.OCI_CONFIG, [], "application/x-anything")) == Kind.IMAGE  # an image all the same
    assert kind_of(manifest(mt.OCI_EMPTY, [], mt.MODELPACK_MANIFEST)) == Kind.MODELPACK
    assert kind_of(manifest(mt.MODELPACK_CONFIG, [])) == Kind.MODELPACK
    titled = [layer("text/plain", **{mt.ANNOTATION_TITLE: "a.txt"})]
    assert kind_of(manifest("application/vnd.unknown.config.v1+json", titled)) == Kind.FILES
    with pytest.raises(OCIError, match=r"unsupported artifact type 'application/vnd\.example\.sbom'"):
        kind_of(manifest(mt.OCI_EMPTY, [layer("application/json")], "application/vnd.example.sbom"))


def test_tar_or_raw() -> None:
    for suffix, tar in ((".raw", False), (".tar", True), (".tar+gzip", True), (".tar+zstd", True)):
        for kind in ("weight", "weight.config", "doc", "code", "dataset"):
            assert is_tar_layer(layer(f"application/vnd.cncf.model.{kind}.v1{suffix}"), Kind.MODELPACK) is tar
    assert not is_tar_layer(layer(mt.OCI_LAYER, **{mt.ANNOTATION_TITLE: "f"}), Kind.FILES)  # oras' default type
    assert is_tar_layer(layer(mt.OCI_LAYER_GZIP, **{mt.ANNOTATION_TITLE: "dir"}), Kind.FILES)  # an oras-py directory
    assert is_tar_layer(layer("application/x-tar", **{mt.ANNOTATION_ORAS_UNPACK: "true"}), Kind.FILES)


def test_file_paths_stay_inside() -> None:
    fp = mt.ANNOTATION_MODELPACK_FILEPATH
    assert file_path(layer("x", **{fp: "./weights//model.bin"})) == "weights/model.bin"
    assert file_path(layer("x", **{fp: "/../../etc/passwd"})) == "etc/passwd"
    assert file_path(layer("x", **{mt.ANNOTATION_TITLE: "t.bin"})) == "t.bin"
    with pytest.raises(OCIError, match="names no file path"):
        file_path(layer("x", **{fp: "../.."}))
