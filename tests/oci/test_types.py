from __future__ import annotations

import io
from pathlib import Path

import pytest

from lazypull.errors import DigestMismatchError, InvalidDigestError, LazypullError, OCIError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.layout import OCILayout, parse_layout_ref
from lazypull.oci.store import VerifyingReader
from lazypull.oci.types import Descriptor, Index, Manifest, Platform


def test_digest_validation() -> None:
    d = digestlib.of_bytes(b"abc")
    assert digestlib.validate(d) == d
    for bad in ["sha256:abc", "md5:" + "0" * 32, "sha256:" + "G" * 64, "nocolon", ""]:
        with pytest.raises(InvalidDigestError):
            digestlib.validate(bad)
    with pytest.raises(DigestMismatchError):
        digestlib.verify(b"abd", d)


def test_manifest_roundtrip_keeps_unknown_fields() -> None:
    cfg = Descriptor(mt.OCI_CONFIG, digestlib.of_bytes(b"{}"), 2)
    m = Manifest(cfg, [Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(b"x"), 1, {"a": "b"})])
    m.extra["subject"] = cfg.to_json()
    again = Manifest.parse(m.to_bytes())
    assert again.to_bytes() == m.to_bytes()
    assert again.layers[0].annotations == {"a": "b"}


@pytest.mark.parametrize(
    "doc",
    [
        b"[]",
        b"not json",
        b'{"schemaVersion": 1, "layers": []}',
        b'{"schemaVersion": 2, "config": {}, "layers": []}',
        b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:00", "size": 1}, "layers": []}',
    ],
)
def test_bad_manifests_raise_oci_error(doc: bytes) -> None:
    with pytest.raises(OCIError):
        Manifest.parse(doc)


def test_index_platform_selection() -> None:
    mk = lambda p: Descriptor(mt.OCI_MANIFEST, digestlib.of_bytes(p.encode()), 1, platform=Platform.parse(p))  # noqa: E731
    idx = Index([mk("linux/amd64"), mk("linux/arm64")])
    assert idx.select(Platform.parse("linux/arm64/v8")).platform == Platform.parse("linux/arm64")
    with pytest.raises(OCIError, match="linux/amd64, linux/arm64"):
        idx.select(Platform.parse("linux/s390x"))
    assert Index.parse(idx.to_bytes()).manifests == idx.manifests


def test_layout_roundtrip_and_tamper(tmp_path: Path) -> None:
    lay = OCILayout(tmp_path / "l", create=True)
    data = b"hello"
    d = Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(data), len(data))
    lay.push_blob(d, io.BytesIO(data))
    assert lay.fetch(d) == data
    with pytest.raises(OCIError):
        lay.push_blob(Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(b"other"), 5), io.BytesIO(b"wrong"))
    assert not list((tmp_path / "l" / "blobs" / "sha256").glob(".tmp-*"))
    lay.blob_path(d.digest).write_bytes(b"HELLO")
    with pytest.raises(DigestMismatchError):
        lay.fetch(d)
    with pytest.raises(DigestMismatchError):
        VerifyingReader(lay.open_blob(d), d).read()
    m = Descriptor(mt.OCI_MANIFEST, digestlib.of_bytes(b"{}"), 2)
    lay.push_manifest(m, b"{}", tag="v1")
    assert OCILayout.from_ref(f"oci:{tmp_path / 'l'}:v1").resolve().digest == m.digest
    with pytest.raises(OCIError, match="no image tagged"):
        OCILayout(tmp_path / "l", "v2").resolve()


def test_truncated_stream_detected() -> None:
    data = b"abcdef"
    d = Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(data), len(data))
    with pytest.raises(LazypullError, match="truncated"):
        VerifyingReader(io.BytesIO(data[:3]), d).read()


def test_parse_layout_ref() -> None:
    assert parse_layout_ref("oci:/a/b:tag") == (Path("/a/b"), "tag")
    assert parse_layout_ref("oci:/a/b") == (Path("/a/b"), None)
    with pytest.raises(OCIError):
        parse_layout_ref("docker.io/library/x")
