"""The store's names and ``info``, as containers/storage makes and reads them."""

from __future__ import annotations

import base64
import json

from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor
from lazypull.store.info import GZIP, ZSTD, decode_ref, layer_info, ref_dir


def test_info_has_the_fields_containers_storage_decodes() -> None:
    desc = Descriptor(mt.OCI_LAYER_GZIP, "sha256:" + "a" * 64, 1234)
    info = json.loads(layer_info(desc, "sha256:" + "b" * 64))
    assert info == {
        "compressed-diff-digest": desc.digest,
        "compressed-size": 1234,
        "diff-digest": "sha256:" + "b" * 64,
        "compression": GZIP,
    }
    zstd = Descriptor("application/vnd.oci.image.layer.v1.tar+zstd", desc.digest, 1)
    assert json.loads(layer_info(zstd, desc.digest))["compression"] == ZSTD


def test_reference_names_round_trip_even_with_a_slash_in_the_base64() -> None:
    ref = "ho?st/x:tag"  # "?" makes a "/" (real references have none: their bytes never do)
    name = ref_dir(ref)
    assert "/" in name
    assert name == base64.standard_b64encode(ref.encode()).decode()
    assert decode_ref(name) == ref
    assert decode_ref(name.split("/")[0]) is None  # a first path component is not a reference yet
    assert decode_ref("not base64!") is None
    assert decode_ref("") is None
