"""Artifacts written by tools lazypull did not write: the ``oras`` Python SDK pushing files
and a directory to a registry, and ``olot`` adding a ModelPack manifest to an OCI layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import oras.client
import pytest
from olot.basics import oci_layers_on_top

from lazypull.imagefs import open_image
from lazypull.models import load_tensors
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from tests.support.artifacts import safetensors_bytes
from tests.support.images import Entry, write_image
from tests.support.registry import Registry

pytestmark = pytest.mark.filterwarnings("ignore::lazypull.imagefs.StreamedLayerWarning")
WEIGHTS = os.urandom(200_000)


def test_oras_sdk_push_is_read(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    (src / "conf").mkdir(parents=True)
    (src / "weights.bin").write_bytes(WEIGHTS)
    (src / "conf" / "tokenizer.json").write_text('{"v": 1}')
    monkeypatch.chdir(src)
    ref = f"{registry.host}/files/oras:v1"
    client = oras.client.OrasClient(insecure=True)
    client.push(target=ref, files=["weights.bin", "conf"])  # a file, and a directory (tar+gzip)
    with open_image(ref, plain_http=True, cache_dir=tmp_path / "cache") as img:
        assert img.kind == "files"
        assert img.ls("/") == ["conf", "weights.bin"]
        assert img.read_bytes("weights.bin") == WEIGHTS
        assert img.read_text("conf/tokenizer.json") == '{"v": 1}'


def _multi_arch(layout: Path) -> None:
    """Make the layout's one image a one-platform index, as olot wants a multi-arch base."""
    root = json.loads((layout / "index.json").read_text())
    manifest = root["manifests"][0]
    manifest["platform"] = {"os": "linux", "architecture": "amd64"}
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [manifest]}).encode()
    (layout / "blobs/sha256" / digestlib.hex_part(digestlib.of_bytes(index))).write_bytes(index)
    entry = {"mediaType": mt.OCI_INDEX, "digest": digestlib.of_bytes(index), "size": len(index)}
    entry["annotations"] = manifest.pop("annotations", {})
    root["manifests"] = [entry]
    (layout / "index.json").write_text(json.dumps(root))


def test_olot_modelpack_is_read(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_image(layout, [[Entry("etc/os-release", data=b"ID=base\n")]])
    _multi_arch(layout)
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, dtype=np.int64)}
    model = tmp_path / "model.safetensors"
    model.write_bytes(safetensors_bytes(tensors))
    card = tmp_path / "README.md"
    card.write_text("# a model card\n")
    oci_layers_on_top(layout, [model], card, add_modelpack=True)
    root = json.loads((layout / "index.json").read_text())
    modelpack = [m for m in root["manifests"] if m["mediaType"] == mt.OCI_MANIFEST]
    assert len(modelpack) == 1
    modelpack[0].setdefault("annotations", {})[mt.ANNOTATION_REF_NAME] = "model"  # a tag, as `oras tag` gives
    (layout / "index.json").write_text(json.dumps(root))
    with open_image(f"oci:{layout}:model", cache_dir=tmp_path / "cache") as img:
        assert img.kind == "modelpack"
        assert img.ls("models") == ["README.md", "model.safetensors"]
        assert img.read_text("models/README.md") == "# a model card\n"
        t = load_tensors(img, "models/model.safetensors", ["w"])
        np.testing.assert_array_equal(t["w"], tensors["w"])
    # olot also lists it in the image's index, for platform unknown/unknown
    with open_image(f"oci:{layout}:latest", platform="unknown/unknown", cache_dir=tmp_path / "cache") as img:
        assert img.kind == "modelpack" and img.read_text("models/README.md") == "# a model card\n"
