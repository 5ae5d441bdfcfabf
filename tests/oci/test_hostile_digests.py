"""One digest validator for every digest that enters: manifests, descriptors, snapshot labels."""

from __future__ import annotations

import pytest

from lazypull.errors import InvalidDigestError, OCIError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor
from lazypull.snapshot.remote import LayerResolver, NotRemote

BAD = [
    "sha256:/../../etc/shadow",
    "sha256:" + "A" * 64,
    "sha256:" + "0" * 63,
    "sha256:" + "0" * 64 + "\n",
    "sha256:" + "0" * 64 + "/x",
    "SHA256:" + "0" * 64,
    "sha384:" + "0" * 96,
    "sha512:" + "0" * 64,
    "0" * 64,
    "",
]


@pytest.mark.parametrize("bad", BAD)
def test_validator_rejects(bad: str) -> None:
    with pytest.raises(InvalidDigestError):
        digestlib.validate(bad)
    assert not digestlib.is_valid(bad)


def test_validator_accepts_and_restricts_algorithms() -> None:
    assert digestlib.validate("sha512:" + "a" * 128) == "sha512:" + "a" * 128
    with pytest.raises(InvalidDigestError, match="unsupported digest algorithm"):
        digestlib.validate("sha512:" + "a" * 128, ("sha256",))


@pytest.mark.parametrize("bad", BAD)
def test_descriptors_validate_digests(bad: str) -> None:
    with pytest.raises(OCIError):
        Descriptor.from_json({"mediaType": mt.OCI_LAYER_GZIP, "digest": bad, "size": 1})


@pytest.mark.parametrize("label", [mt.LABEL_STARGZ_DIGEST, mt.LABEL_CRI_MANIFEST_DIGEST])
def test_snapshot_labels_validate_digests(label: str) -> None:
    labels = {
        mt.LABEL_STARGZ_REFERENCE: "localhost:1/x:y",
        mt.LABEL_STARGZ_DIGEST: "sha256:" + "0" * 64,
        label: "sha256:/../../etc/shadow",
    }
    with pytest.raises(NotRemote, match="malformed digest"):
        LayerResolver(None).resolve(labels)  # type: ignore[arg-type]  # refused before any request
