"""load_tensors over a ModelPack artifact with a chunk index: the header, then only the
tensors asked for (adjacent ones coalesced), each byte verified; fetch() of a whole file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load

from lazypull.cli.main import main
from lazypull.errors import LazypullError
from lazypull.imagefs import open_image
from lazypull.models import load_tensors
from lazypull.models.safetensors import TensorInfo, coalesce
from lazypull.oci import digest as digestlib
from tests.support.artifacts import header_size, modelpack_file, push_artifact, safetensors_bytes, tensor_span
from tests.support.registry import Registry

CHUNK = 16 << 10
RNG = np.random.default_rng(7)
TENSORS = {
    "embed.weight": RNG.standard_normal((64, 96), dtype=np.float32),
    "layers.0.attn": RNG.standard_normal((96, 96)).astype(np.float16),
    "layers.0.bias": RNG.standard_normal(96, dtype=np.float32),
    "layers.1.attn": RNG.standard_normal((96, 96)).astype(np.float16),
    "layers.1.ids": RNG.integers(0, 1 << 40, size=300, dtype=np.int64),
    "mask": RNG.integers(0, 2, size=(7, 5)).astype(np.bool_),
    "lm_head.weight": RNG.standard_normal((96, 128), dtype=np.float32),
}
MODEL = safetensors_bytes(TENSORS, metadata={"format": "np"})


@pytest.fixture
def model_ref(registry: Registry) -> str:
    ref = push_artifact(registry.host, "models/st", [modelpack_file("model.safetensors", MODEL)])
    assert main(["index", "create", "--plain-http", "--chunk-size", str(CHUNK), ref]) == 0
    return ref


def test_one_tensor_fetches_its_chunks_and_the_header_only(model_ref: str, tmp_path: Path) -> None:
    name = "layers.0.attn"
    start, end = tensor_span(MODEL, name)
    with open_image(model_ref, plain_http=True, cache_dir=tmp_path / "cache") as img:
        t = load_tensors(img, "model.safetensors")
        assert img.stats().bytes_fetched == header_size(MODEL)  # the header is a chunk of its own
        assert sorted(t) == sorted(TENSORS) and t.metadata == {"format": "np"}
        assert t.infos[name].shape == (96, 96) and t.infos[name].dtype == "F16"
        arr = t[name]
        np.testing.assert_array_equal(arr, TENSORS[name])
        assert arr.dtype == np.float16
        fetched = img.stats().bytes_fetched
        assert fetched <= (end - start) + header_size(MODEL) + 2 * CHUNK
        assert fetched < len(MODEL) / 2


def test_names_are_fetched_at_once_and_match_safetensors(model_ref: str, tmp_path: Path) -> None:
    want = ["layers.1.ids", "mask", "embed.weight"]
    with load_tensors(model_ref, "model.safetensors", want, plain_http=True, cache_dir=tmp_path) as t:
        assert sorted(t) == sorted(want)
        for name in want:
            np.testing.assert_array_equal(t[name], TENSORS[name])
    full = load(MODEL)
    with load_tensors(model_ref, "model.safetensors", plain_http=True, cache_dir=tmp_path) as t:
        for name, arr in full.items():
            np.testing.assert_array_equal(t[name], arr)


def test_adjacent_ranges_coalesce() -> None:
    a, b, c = (
        TensorInfo("a", "U8", (4,), 10, 14),
        TensorInfo("b", "U8", (6,), 14, 20),
        TensorInfo("c", "U8", (1,), 30, 31),
    )
    assert coalesce([c, b, a]) == [[a, b], [c]]


def test_fetch_whole_file_in_parallel_ranges_then_reads_are_local(model_ref: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with open_image(model_ref, plain_http=True, cache_dir=cache) as img:
        done: list[int] = []
        assert img.fetch("model.safetensors", part_size=3 * CHUNK, workers=4, progress=done.append) == len(MODEL)
        assert sum(done) == len(MODEL) == img.stats().bytes_fetched
    with open_image(model_ref, plain_http=True, cache_dir=cache) as img:  # the chunks from the cache
        t = load_tensors(img, "model.safetensors")
        for name, arr in TENSORS.items():
            np.testing.assert_array_equal(t[name], arr)
        assert img.stats().bytes_fetched == 0


def test_tampered_tensor_is_an_error(model_ref: str, registry: Registry, tmp_path: Path) -> None:
    start, _end = tensor_span(MODEL, "lm_head.weight")
    bad = bytearray(MODEL)
    bad[start + 5] ^= 1
    registry.blob_data_path(digestlib.of_bytes(MODEL)).write_bytes(bytes(bad))
    with load_tensors(model_ref, "model.safetensors", plain_http=True, cache_dir=tmp_path) as t:
        np.testing.assert_array_equal(t["mask"], TENSORS["mask"])
        with pytest.raises(LazypullError, match="digest mismatch"):
            t["lm_head.weight"]


@pytest.mark.filterwarnings("ignore::lazypull.imagefs.StreamedLayerWarning")
def test_not_safetensors_is_an_error(registry: Registry, tmp_path: Path) -> None:
    ref = push_artifact(registry.host, "models/bad", [modelpack_file("model.safetensors", b"\xff" * 8 + b"x" * 100)])
    with pytest.raises(LazypullError, match="header"):
        load_tensors(ref, "model.safetensors", plain_http=True, cache_dir=tmp_path)
