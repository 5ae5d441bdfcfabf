"""``lazypull index create`` and the reads it makes lazy: ranged, each chunk verified, a
tampered chunk an error (the registry's stored blob altered), never data."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

from lazypull.chunkindex.create import push_chunk_index
from lazypull.chunkindex.find import find_chunk_index
from lazypull.cli.main import main
from lazypull.errors import LazypullError
from lazypull.format.chunklist import BlobChunks, parse_index
from lazypull.imagefs import StreamedLayerWarning, open_image
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.registry.options import RegistryOptions
from lazypull.registry.referrers import list_referrers
from lazypull.registry.repository import RegistryStore
from tests.support.artifacts import modelpack_file, push_artifact, tar_of
from tests.support.registry import Registry

CHUNK = 4096
WEIGHTS = os.urandom(40 * CHUNK + 123)


def indexed_model(registry: Registry) -> str:
    ref = push_artifact(
        registry.host,
        "models/indexed",
        [
            modelpack_file("docs", tar_of({"README.md": b"hi\n"}), "application/vnd.cncf.model.doc.v1.tar"),
            modelpack_file("model.bin", WEIGHTS),  # on top: reading it never opens the tar below
        ],
    )
    assert main(["index", "create", "--plain-http", "--chunk-size", str(CHUNK), ref]) == 0
    return ref


def test_index_is_a_referrer_covering_the_raw_blobs(registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    ref = indexed_model(registry)
    printed = capsys.readouterr().out.strip()
    store = RegistryStore.open(ref, RegistryOptions(plain_http=True))
    subject = store.resolve()
    found = list_referrers(store.client, store.ref, subject.digest, mt.CHUNK_INDEX_ARTIFACT_TYPE)
    assert [d.digest for d in found] == [printed]
    found = find_chunk_index(store, subject.digest)
    assert found is not None
    blobs = parse_index(store.fetch(found[0]))
    assert list(blobs) == [digestlib.of_bytes(WEIGHTS)]  # the tar layer is not a raw blob
    b = blobs[digestlib.of_bytes(WEIGHTS)]
    assert b.chunk_size == CHUNK and len(b.chunks) == 41
    assert b.chunks[3] == digestlib.of_bytes(WEIGHTS[3 * CHUNK : 4 * CHUNK])


def test_indexed_reads_are_ranged_and_verified(registry: Registry, tmp_path: Path) -> None:
    ref = indexed_model(registry)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_image(ref, plain_http=True, cache_dir=tmp_path / "cache") as img:
            assert img.pread("model.bin", 10 * CHUNK + 100, 50) == WEIGHTS[10 * CHUNK + 100 : 10 * CHUNK + 150]
            assert img.stats().bytes_fetched == CHUNK  # the one chunk the read covers
            assert img.stats().layers_opened == 1
            assert img.pread("model.bin", 5 * CHUNK - 10, 2 * CHUNK + 20) == WEIGHTS[5 * CHUNK - 10 : 7 * CHUNK + 10]
            assert img.stats().bytes_fetched == CHUNK + 4 * CHUNK
            assert img.pread("model.bin", len(WEIGHTS) - 5, 100) == WEIGHTS[-5:]
            assert img.stats().bytes_fetched == CHUNK + 4 * CHUNK + 123
            assert img.ls("/") == ["README.md", "model.bin"]
            assert img.read_bytes("model.bin") == WEIGHTS
    streamed = [str(w.message) for w in caught if issubclass(w.category, StreamedLayerWarning)]
    assert streamed and not [m for m in streamed if digestlib.of_bytes(WEIGHTS) in m]  # only the tar layer


def test_tampered_chunk_is_an_error_never_data(registry: Registry, tmp_path: Path) -> None:
    ref = indexed_model(registry)
    bad = bytearray(WEIGHTS)
    bad[20 * CHUNK + 7] ^= 0xFF
    registry.blob_data_path(digestlib.of_bytes(WEIGHTS)).write_bytes(bytes(bad))
    with open_image(ref, plain_http=True, cache_dir=tmp_path / "cache") as img:
        assert img.pread("model.bin", 2 * CHUNK, CHUNK) == WEIGHTS[2 * CHUNK : 3 * CHUNK]  # other chunks read
        with pytest.raises(LazypullError, match="digest mismatch"):
            img.pread("model.bin", 20 * CHUNK, 10)
        with pytest.raises(LazypullError):
            img.read_bytes("model.bin")


def test_forged_index_is_caught_by_whole_file_fetch(registry: Registry, tmp_path: Path) -> None:
    """An index made from other bytes (pushed by someone who may push) passes chunk checks
    against a blob altered to match it; fetch() checks the whole file against its digest too."""
    ref = push_artifact(registry.host, "models/forged", [modelpack_file("model.bin", WEIGHTS)])
    bad = bytearray(WEIGHTS)
    bad[7] ^= 1
    chunks = tuple(digestlib.of_bytes(bytes(bad[i : i + CHUNK])) for i in range(0, len(bad), CHUNK))
    store = RegistryStore.open(ref, RegistryOptions(plain_http=True))
    push_chunk_index(store, store.resolve(), [BlobChunks(digestlib.of_bytes(WEIGHTS), len(WEIGHTS), CHUNK, chunks)])
    registry.blob_data_path(digestlib.of_bytes(WEIGHTS)).write_bytes(bytes(bad))
    with open_image(ref, plain_http=True, cache_dir=tmp_path) as img, pytest.raises(LazypullError, match="mismatch"):
        img.fetch("model.bin")


def test_malformed_index_is_refused() -> None:
    zero = "sha256:" + "0" * 64
    with pytest.raises(LazypullError, match="0 chunks for 9000 bytes"):
        parse_index(json.dumps({"chunkSize": 4096, "blobs": [{"digest": zero, "size": 9000, "chunks": []}]}).encode())
    with pytest.raises(LazypullError, match="out of range"):
        parse_index(b'{"chunkSize": 1, "blobs": []}')


def test_index_create_refuses_images_and_layouts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", "create", f"oci:{tmp_path}/x:v1"]) == 1
    assert "registry" in capsys.readouterr().err
