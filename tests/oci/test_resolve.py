"""Every root shape other tools write resolves to the image: nested indexes, manifests
without a platform, Docker schema2 manifests and manifest lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.errors import OCIError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.layout import OCILayout
from lazypull.oci.resolve import image_manifests, select_manifest
from lazypull.oci.types import Descriptor, Index, Platform, host_platform
from tests.support.images import Entry, busybox_layer, write_image

LAYERS = [[Entry("etc", "dir"), Entry("etc/hello", data=b"hello\n")]]


def _push_index(layout: OCILayout, manifests: list[Descriptor], media_type: str = mt.OCI_INDEX) -> Descriptor:
    data = Index(manifests=manifests, media_type=media_type).to_bytes()
    d = Descriptor(media_type, digestlib.of_bytes(data), len(data))
    layout.push_bytes(d, data)
    return d


def _set_root(layout: OCILayout, root: Descriptor, tag: str = "latest") -> None:
    """index.json holding just *root* (what ``ctr export`` writes)."""
    (layout.root / "index.json").write_bytes(Index(manifests=[]).to_bytes())
    layout.set_tag(tag, root)


def _strip_platform(d: Descriptor) -> Descriptor:
    return Descriptor(d.media_type, d.digest, d.size)


def test_nested_index_whose_manifest_has_no_platform(tmp_path: Path) -> None:
    """The shape of ``ctr-remote image convert`` + ``ctr export``."""
    img = write_image(tmp_path / "l", LAYERS)
    nested = _push_index(img.layout, [_strip_platform(img.manifest_desc)])
    _set_root(img.layout, nested)
    assert select_manifest(img.layout, img.layout.resolve()).digest == img.manifest_desc.digest
    assert main(["check", f"oci:{tmp_path / 'l'}"]) == 3  # verified; unconverted, so not lazily pullable
    assert main(["unpack", f"oci:{tmp_path / 'l'}", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out/etc/hello").read_bytes() == b"hello\n"
    assert main(["convert", f"oci:{tmp_path / 'l'}", f"oci:{tmp_path / 'c'}:x"]) == 0
    assert main(["check", "--full", f"oci:{tmp_path / 'c'}:x"]) == 0
    assert main(["copy", "--platform", str(host_platform()), f"oci:{tmp_path / 'l'}", f"oci:{tmp_path / 'p'}:y"]) == 0
    assert main(["check", f"oci:{tmp_path / 'p'}:y"]) == 3


def test_single_manifest_without_platform_is_the_image(tmp_path: Path) -> None:
    img = write_image(tmp_path / "l", LAYERS)
    _set_root(img.layout, _strip_platform(img.manifest_desc))
    assert main(["check", f"oci:{tmp_path / 'l'}"]) == 3
    idx = _push_index(img.layout, [_strip_platform(img.manifest_desc)])
    _set_root(img.layout, idx)
    assert main(["convert", f"oci:{tmp_path / 'l'}", f"oci:{tmp_path / 'c'}:x"]) == 0


def test_manifest_without_platform_for_another_arch_is_not_taken(tmp_path: Path) -> None:
    other = Platform("linux", "riscv64")
    img = write_image(tmp_path / "l", LAYERS, platform=other)
    idx = _push_index(img.layout, [_strip_platform(img.manifest_desc)])
    with pytest.raises(OCIError, match="no manifest for platform"):
        select_manifest(img.layout, idx, Platform("linux", "amd64"))
    assert select_manifest(img.layout, idx, other).digest == img.manifest_desc.digest


def test_docker_manifest_list_converts_and_checks(tmp_path: Path) -> None:
    host = write_image(tmp_path / "l", [busybox_layer(), *LAYERS], docker_types=True)
    arm = write_image(tmp_path / "arm", LAYERS, docker_types=True, platform=Platform("linux", "arm64", "v8"))
    for blob in (tmp_path / "arm/blobs/sha256").iterdir():
        host.layout.add_blob_file(blob, Descriptor("x", "sha256:" + blob.name, blob.stat().st_size))
    root = _push_index(host.layout, [host.manifest_desc, arm.manifest_desc], mt.DOCKER_MANIFEST_LIST)
    _set_root(host.layout, root)
    src = f"oci:{tmp_path / 'l'}"
    assert main(["check", src]) == 3
    assert main(["check", "--platform", "linux/arm64", src]) == 3
    assert main(["convert", "--all-platforms", src, f"oci:{tmp_path / 'c'}:x"]) == 0
    out = OCILayout(tmp_path / "c", "x")
    top = out.resolve()
    assert top.media_type == mt.DOCKER_MANIFEST_LIST
    ms = image_manifests(out, top, all_platforms=True)
    assert [m.media_type for m in ms] == [mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST]
    assert main(["check", "--full", "--platform", "linux/arm64/v8", f"oci:{tmp_path / 'c'}:x"]) == 0
    assert main(["convert", "--oci", src, f"oci:{tmp_path / 'o'}:x"]) == 0
    assert OCILayout(tmp_path / "o", "x").resolve().media_type == mt.OCI_MANIFEST


def test_nested_indexes_convert_with_all_platforms_and_stay_nested(tmp_path: Path) -> None:
    img = write_image(tmp_path / "l", LAYERS)
    inner = _push_index(img.layout, [img.manifest_desc])
    _set_root(img.layout, _push_index(img.layout, [inner]))
    assert main(["convert", "--all-platforms", f"oci:{tmp_path / 'l'}", f"oci:{tmp_path / 'c'}:x"]) == 0
    out = OCILayout(tmp_path / "c", "x")
    (m,) = image_manifests(out, out.resolve(), all_platforms=True)
    assert m.digest != img.manifest_desc.digest
    assert main(["check", "--full", f"oci:{tmp_path / 'c'}:x"]) == 0


def test_index_loop_is_an_error(tmp_path: Path) -> None:
    img = write_image(tmp_path / "l", LAYERS)
    d = _push_index(img.layout, [])
    for _ in range(6):
        d = _push_index(img.layout, [d])
    with pytest.raises(OCIError, match="nested"):
        select_manifest(img.layout, d)
