"""``lazypull convert`` of a ModelPack artifact: tar layers rebuilt as eStargz / zstd:chunked
under their own ModelPack media types, raw layers kept, the config's diffIds updated; the
result reads lazily."""

from __future__ import annotations

import gzip
import io
import json
import os
import warnings
from pathlib import Path

import pytest
import zstandard

from lazypull.cli.main import main
from lazypull.imagefs import StreamedLayerWarning, open_image
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Manifest
from lazypull.registry.options import RegistryOptions
from lazypull.registry.repository import RegistryStore
from tests.support.artifacts import WEIGHT_CONFIG_RAW, modelpack_file, push_artifact, tar_of
from tests.support.registry import Registry

A = os.urandom(600_000)
TAR = tar_of({"shards/a.bin": A, "shards/b.txt": b"b" * 1000})


@pytest.mark.parametrize(("fmt", "suffix"), [("estargz", "+gzip"), ("zstdchunked", "+zstd")])
def test_convert_modelpack(registry: Registry, tmp_path: Path, fmt: str, suffix: str) -> None:
    weights = gzip.compress(TAR)
    cfg_json = b'{"config": "x"}'
    config = {"descriptor": {"name": "m"}, "modelfs": {"type": "layers", "diffIds": [
        digestlib.of_bytes(TAR), digestlib.of_bytes(cfg_json)]}}  # fmt: skip
    src = push_artifact(
        registry.host,
        "models/conv",
        [
            modelpack_file("shards", weights, "application/vnd.cncf.model.weight.v1.tar+gzip"),
            modelpack_file("config.json", cfg_json, WEIGHT_CONFIG_RAW),
        ],
        config=json.dumps(config).encode(),
    )
    dst = f"{registry.host}/models/conv:{fmt}"
    extra = ["--zstdchunked"] if fmt == "zstdchunked" else []
    assert main(["convert", "--plain-http", "--chunk-size", "65536", *extra, src, dst]) == 0

    store = RegistryStore.open(dst, RegistryOptions(plain_http=True))
    d = store.resolve()
    manifest = Manifest.parse(store.fetch(d), d.media_type)
    assert manifest.extra["artifactType"] == mt.MODELPACK_MANIFEST
    assert manifest.config.media_type == mt.MODELPACK_CONFIG
    tar_layer, raw_layer = manifest.layers
    assert tar_layer.media_type == "application/vnd.cncf.model.weight.v1.tar" + suffix
    assert tar_layer.annotations[mt.ANNOTATION_MODELPACK_FILEPATH] == "shards"
    assert mt.ANNOTATION_TOC_DIGEST in tar_layer.annotations
    assert raw_layer.digest == digestlib.of_bytes(cfg_json)
    blob = store.fetch(tar_layer, limit=1 << 30)
    plain = gzip.decompress(blob) if suffix == "+gzip" else _unzstd(blob)
    new_config = json.loads(store.fetch(manifest.config))
    assert new_config["modelfs"]["diffIds"] == [digestlib.of_bytes(plain), digestlib.of_bytes(cfg_json)]

    with warnings.catch_warnings(record=True) as caught, open_image(dst, plain_http=True, cache_dir=tmp_path) as img:
        warnings.simplefilter("always")
        assert img.read_bytes("shards/b.txt") == b"b" * 1000
        assert img.stats().bytes_fetched < tar_layer.size // 2  # TOC and one small file
        assert img.read_bytes("shards/a.bin") == A
    assert not [w for w in caught if issubclass(w.category, StreamedLayerWarning) and tar_layer.digest in str(w)]


def _unzstd(blob: bytes) -> bytes:
    """Every frame (zstd:chunked is many)."""
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()
