"""SOCI index manifest v2: a SOCI-enabled image laid out by hand from soci-snapshotter's
published layout (``docs/soci-index-manifest-v2.md``, ``soci/soci_index.go``,
``soci/soci_convert.go``; literal strings here, not lazypull's constants) is read lazily,
wins over a v1 index, and ``lazypull soci convert`` writes that same layout."""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lazypull import open_image
from lazypull.cli.main import main
from lazypull.format.soci.build import build_ztoc_file
from lazypull.oci.resolve import select_manifest
from lazypull.oci.types import Descriptor, host_platform
from lazypull.registry.options import RegistryOptions
from lazypull.registry.repository import RegistryStore
from lazypull.soci.create import image_manifest
from lazypull.soci.find import soci_ztocs
from tests.support.images import Entry, write_image
from tests.support.proxy import Proxy, start_proxy
from tests.support.registry import Registry, start_registry

BIG = random.Random(29).randbytes(3 << 20)  # incompressible: the layer is about as big
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SOCI_V2 = "application/vnd.amazon.soci.index.v2+json"
EMPTY = b"{}"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Proxy, Path]]:
    root = tmp_path_factory.mktemp("sociv2")
    reg = start_registry(root / "registry")
    proxy = start_proxy(reg.url)
    try:
        layers = [[Entry("etc/hello", data=b"hello\n")], [Entry("big", data=BIG), Entry("small", data=b"tiny\n")]]
        write_image(root / "src", layers, docker_types=True)
        yield reg, proxy, root
    finally:
        proxy.stop()
        reg.stop()


def push_source(reg: Registry, root: Path, name: str) -> str:
    ref = f"{reg.host}/v2/{name}:src"
    assert main(["copy", "--plain-http", f"oci:{root / 'src'}:latest", ref]) == 0
    return ref


def store(ref: str) -> RegistryStore:
    return RegistryStore.open(ref, RegistryOptions(plain_http=True))


def put_manifest(s: RegistryStore, obj: dict[str, Any], tag: str | None = None) -> dict[str, Any]:
    data = json.dumps(obj).encode()
    s.client.put_manifest(s.ref, data, obj["mediaType"], tag=tag)
    return {"mediaType": obj["mediaType"], "digest": sha(data), "size": len(data)}


def hand_built(reg: Registry, root: Path, name: str, span: int = 65536, pointer: str | None = None) -> tuple[str, str]:
    """A SOCI-enabled image assembled from the documented facts; (its ref, the zTOC digest).
    *pointer*: what the manifest's annotation names instead of the real index."""
    s = store(push_source(reg, root, name))
    manifest = json.loads(s.fetch(s.resolve()))
    layer = manifest["layers"][1]
    path = root / f"{name}.layer"
    path.write_bytes(s.fetch(Descriptor.from_json(layer), limit=64 << 20))
    ztoc = build_ztoc_file(path, span).to_bytes()  # the zTOC blob itself is v1's, unchanged
    s.push_bytes(Descriptor("application/octet-stream", sha(ztoc), len(ztoc)), ztoc)
    s.push_bytes(Descriptor(SOCI_V2, sha(EMPTY), 2), EMPTY)
    ztoc_desc = {
        "mediaType": "application/octet-stream",
        "digest": sha(ztoc),
        "size": len(ztoc),
        "annotations": {
            "com.amazon.soci.image-layer-mediaType": layer["mediaType"],
            "com.amazon.soci.image-layer-digest": layer["digest"],
        },
    }
    soci = put_manifest(
        s,
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": SOCI_V2, "digest": sha(EMPTY), "size": 2},
            "layers": [ztoc_desc],
            "annotations": {"com.amazon.soci.build-tool-identifier": "AWS SOCI CLI v0.2"},
        },
    )
    manifest["mediaType"] = OCI_MANIFEST
    manifest["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest["annotations"] = {"com.amazon.soci.index-digest": pointer or soci["digest"]}
    image = put_manifest(s, manifest)
    platform = host_platform().to_json()  # write_image's
    entries = [
        # listed first on purpose: a reader must never take the SOCI index for the image
        {**soci, "artifactType": SOCI_V2, "platform": platform,
         "annotations": {"com.amazon.soci.image-manifest-digest": image["digest"]}},
        {**image, "annotations": manifest["annotations"], "platform": platform},
    ]  # fmt: skip
    put_manifest(s, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, tag="soci")
    return f"{reg.host}/v2/{name}:soci", sha(ztoc)


def ztocs_of(ref: str) -> dict[str, str]:
    s = store(ref)
    desc, m = image_manifest(s)
    return {k: v.digest for k, v in soci_ztocs(s.client, s.ref, desc.digest, m.annotations).items()}


def read_lazily(ref: str, cache: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a StreamedLayerWarning fails the test
        with open_image(ref, plain_http=True, cache_dir=cache) as img:
            assert img.read_bytes("small") == b"tiny\n"
            st = img.stats()
            assert img.read_bytes("big") == BIG
    assert st.layers_opened == 1 and st.bytes_fetched < st.image_bytes / 4, st


def test_hand_built_v2_is_read_lazily(world: tuple[Registry, Proxy, Path], tmp_path: Path) -> None:
    reg, proxy, root = world
    ref, ztoc = hand_built(reg, root, "hand")
    image, manifest = image_manifest(store(ref))
    assert select_manifest(store(ref), store(ref).resolve()).digest == image.digest  # not the SOCI index listed first
    assert ztocs_of(ref) == {manifest.layers[1].digest: ztoc}
    read_lazily(ref.replace(reg.host, proxy.host), tmp_path / "cache")


def test_v2_wins_over_v1_and_a_bad_pointer_falls_back(world: tuple[Registry, Proxy, Path], tmp_path: Path) -> None:
    reg, _proxy, root = world
    ref, v2_ztoc = hand_built(reg, root, "both")
    assert main(["soci", "create", "--plain-http", "--span-size", "131072", "--min-layer-size", "0", ref]) == 0
    assert set(ztocs_of(ref).values()) == {v2_ztoc}
    broken, _ = hand_built(reg, root, "broken", pointer=sha(b"no such index"))
    assert main(["soci", "create", "--plain-http", "--span-size", "131072", "--min-layer-size", "0", broken]) == 0
    v1 = ztocs_of(broken)
    layer = image_manifest(store(broken))[1].layers[1]
    assert len(v1) == 2 and v1[layer.digest] != v2_ztoc  # the v1 index's (both layers, other spans)


def test_convert_writes_the_documented_layout(
    world: tuple[Registry, Proxy, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg, _proxy, root = world
    src = push_source(reg, root, "conv")
    dst = f"{reg.host}/v2/converted:soci"  # another repository: blobs are mounted across
    before = store(src).resolve()
    capsys.readouterr()
    args = ["soci", "convert", "--plain-http", "--span-size", "65536", "--min-layer-size", "0", src, dst]
    assert main(args) == 0
    root_digest = capsys.readouterr().out.strip()
    assert store(src).resolve() == before
    s = store(dst)
    top = s.resolve()
    assert top.digest == root_digest
    index = json.loads(s.fetch(top))
    assert index["mediaType"] == OCI_INDEX and len(index["manifests"]) == 2
    image, soci = index["manifests"]
    assert image["mediaType"] == OCI_MANIFEST and "artifactType" not in image
    assert soci["mediaType"] == OCI_MANIFEST and soci["artifactType"] == SOCI_V2
    assert soci["platform"] == image["platform"] == host_platform().to_json()
    assert soci["annotations"] == {"com.amazon.soci.image-manifest-digest": image["digest"]}
    assert image["annotations"] == {"com.amazon.soci.index-digest": soci["digest"]}
    original = json.loads(store(src).fetch(before))
    manifest = json.loads(s.fetch(Descriptor.from_json(image)))
    assert manifest["layers"] == original["layers"]  # unchanged, docker media types included
    assert manifest["config"]["digest"] == original["config"]["digest"]
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert manifest["annotations"] == {"com.amazon.soci.index-digest": soci["digest"]}
    body = json.loads(s.fetch(Descriptor.from_json({k: soci[k] for k in ("mediaType", "digest", "size")})))
    assert body["config"] == {"mediaType": SOCI_V2, "digest": sha(EMPTY), "size": 2}
    assert "subject" not in body and "artifactType" not in body
    assert [z["annotations"]["com.amazon.soci.image-layer-digest"] for z in body["layers"]] == [
        x["digest"] for x in original["layers"]
    ]
    for blob in [body["config"], *body["layers"], *original["layers"]]:
        assert s.has_blob(Descriptor.from_json(blob))
    assert main(["soci", "list", "--plain-http", dst]) == 0
    assert capsys.readouterr().out == ""  # no v1 referrer: the index travels inside the image
    read_lazily(dst, tmp_path / "cache")
    again = f"{reg.host}/v2/converted:again"  # converting a SOCI-enabled image replaces its index
    assert main(["soci", "convert", "--plain-http", "--min-layer-size", "0", dst, again]) == 0
    image2, soci2 = json.loads(store(again).fetch(store(again).resolve()))["manifests"]
    assert soci2["artifactType"] == SOCI_V2 and soci2["digest"] != soci["digest"]
    assert image2["annotations"] == {"com.amazon.soci.index-digest": soci2["digest"]}
    assert json.loads(store(again).fetch(Descriptor.from_json(image2)))["layers"] == original["layers"]
