"""Artifacts opened as images are: ModelPack models and ORAS file sets, their files at their
annotated paths (raw layers as single files, tar layers unpacked), read with verification."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import fsspec
import pytest

from lazypull.cli.main import main
from lazypull.errors import DigestMismatchError, OCIError
from lazypull.imagefs import StreamedLayerWarning, open_image
from lazypull.oci import mediatypes as mt
from tests.support.artifacts import (
    DOC_TAR_GZIP,
    WEIGHT_CONFIG_RAW,
    WEIGHT_TAR,
    Layer,
    modelpack_file,
    oras_file,
    push_artifact,
    tar_of,
)
from tests.support.registry import Registry

pytestmark = pytest.mark.filterwarnings("ignore::lazypull.imagefs.StreamedLayerWarning")

WEIGHTS = os.urandom(300_000)
SHARD = os.urandom(50_000)


def push_model(registry: Registry) -> str:
    return push_artifact(
        registry.host,
        "models/tiny",
        [
            modelpack_file("weights/model.bin", WEIGHTS),
            modelpack_file("config.json", b'{"hidden": 8}', WEIGHT_CONFIG_RAW),
            modelpack_file("shards", tar_of({"shards/part-0.bin": SHARD}), WEIGHT_TAR),
            modelpack_file("docs", tar_of({"README.md": b"# tiny\n", "LICENSE": b"MIT\n"}, gzip=True), DOC_TAR_GZIP),
        ],
    )


def test_modelpack_files_at_their_paths(registry: Registry, tmp_path: Path) -> None:
    ref = push_model(registry)
    with open_image(ref, plain_http=True, cache_dir=tmp_path / "cache") as img:
        assert img.kind == "modelpack"
        assert img.config["descriptor"]["name"] == "tiny"
        assert img.ls("/") == ["LICENSE", "README.md", "config.json", "shards", "weights"]
        info = img.stat("weights/model.bin")
        assert info.is_file and info.size == len(WEIGHTS) and info.mode & 0o777 == 0o644
        assert img.stat("weights").is_dir
        assert img.read_bytes("weights/model.bin") == WEIGHTS
        with img.open("weights/model.bin") as f:
            f.seek(1000)
            assert f.read(10) == WEIGHTS[1000:1010]
        assert img.read_text("config.json") == '{"hidden": 8}'
        assert img.read_bytes("shards/part-0.bin") == SHARD
        assert img.read_text("README.md") == "# tiny\n"


def test_raw_blob_without_index_is_streamed_whole_verified_with_one_warning(registry: Registry, tmp_path: Path) -> None:
    ref = push_model(registry)
    with warnings.catch_warnings(record=True) as caught, open_image(ref, plain_http=True, cache_dir=tmp_path) as img:
        warnings.simplefilter("always")
        img.ls("/")
        assert not [w for w in caught if issubclass(w.category, StreamedLayerWarning) and "weights" in str(w)]
        assert img.read_bytes("weights/model.bin")[:5] == WEIGHTS[:5]
        assert img.read_bytes("weights/model.bin")[-5:] == WEIGHTS[-5:]
        streamed = [w for w in caught if "lazypull index create" in str(w.message)]
        assert len(streamed) == 1


def test_tampered_raw_blob_without_index_is_an_error(registry: Registry, tmp_path: Path) -> None:
    ref = push_model(registry)
    from lazypull.oci import digest as digestlib

    path = registry.blob_data_path(digestlib.of_bytes(WEIGHTS))
    path.write_bytes(WEIGHTS[:-1] + bytes([WEIGHTS[-1] ^ 1]))
    with open_image(ref, plain_http=True, cache_dir=tmp_path) as img, pytest.raises(DigestMismatchError):
        img.read_bytes("weights/model.bin")[:10]


def test_oras_files_by_title(registry: Registry, tmp_path: Path) -> None:
    ref = push_artifact(
        registry.host,
        "files/set",
        [oras_file("hello.txt", b"hello\n"), oras_file("data/blob.bin", WEIGHTS, mt.OCI_LAYER)],
        artifact_type=None,
        config_type="application/vnd.unknown.config.v1+json",
        config=b"{}",
    )
    with open_image(ref, plain_http=True, cache_dir=tmp_path) as img:
        assert img.kind == "files"
        assert img.ls("/") == ["data", "hello.txt"]
        assert img.read_bytes("hello.txt") == b"hello\n"
        assert img.read_bytes("data/blob.bin") == WEIGHTS
    fs = fsspec.filesystem("lazypull", plain_http=True, cache_dir=str(tmp_path))
    with fs.open(f"{ref}/hello.txt", "rb") as f:
        assert f.read() == b"hello\n"


def test_paths_never_leave_the_view(registry: Registry, tmp_path: Path) -> None:
    ref = push_artifact(registry.host, "files/evil", [modelpack_file("../../etc/passwd", b"x")])
    with open_image(ref, plain_http=True, cache_dir=tmp_path) as img:
        assert img.ls("/") == ["etc"]
        assert img.read_bytes("/etc/passwd") == b"x"


def test_unknown_artifact_type_is_a_one_line_error(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    helm = "application/vnd.cncf.helm.config.v1+json"
    ref = push_artifact(
        registry.host, "charts/x", [Layer(b"chart", "application/vnd.cncf.helm.chart.content.v1.tar+gzip")],
        artifact_type=None, config_type=helm, config=b"{}",
    )  # fmt: skip
    with pytest.raises(OCIError, match=re.escape(f"unsupported artifact type {helm!r}")):
        open_image(ref, plain_http=True, cache_dir=tmp_path)
    assert main(["ls", "--plain-http", "--cache-dir", str(tmp_path), ref]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and helm in err


def test_cli_ls_cat_cp(registry: Registry, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    ref = push_model(registry)
    common = ["--plain-http", "--cache-dir", str(tmp_path / "cache")]
    assert main(["ls", *common, ref, "/"]) == 0
    assert capsysbinary.readouterr().out.split() == [b"LICENSE", b"README.md", b"config.json", b"shards", b"weights"]
    assert main(["cat", *common, ref, "config.json"]) == 0
    assert capsysbinary.readouterr().out == b'{"hidden": 8}'
    assert main(["cp", *common, ref, "weights/model.bin", str(tmp_path / "out.bin")]) == 0
    assert (tmp_path / "out.bin").read_bytes() == WEIGHTS
