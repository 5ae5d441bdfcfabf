"""The ``info`` file of a store layer: the fields containers/storage decodes into its Layer."""

from __future__ import annotations

import base64
import binascii
import json
import re

from lazypull.oci.types import Descriptor

GZIP, ZSTD = 2, 4  # containers/storage pkg/archive Compression values
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def layer_info(desc: Descriptor, diff_id: str) -> bytes:
    """JSON for *desc*; *diff_id* (the image config's) is what podman builds layer IDs from."""
    info: dict[str, object] = {
        "compressed-diff-digest": desc.digest,
        "compressed-size": desc.size,
        "diff-digest": diff_id,
        "compression": ZSTD if "zstd" in desc.media_type else GZIP,
    }
    return json.dumps(info).encode()


def ref_dir(ref: str) -> str:
    """The store's name for an image reference (may contain ``/``, as containers/storage makes it)."""
    return base64.standard_b64encode(ref.encode()).decode()


def decode_ref(name: str) -> str | None:
    """The reference a store path names, or None if it is not (yet) complete base64."""
    try:
        ref = base64.b64decode(name.encode(), validate=True).decode()
    except (binascii.Error, ValueError):
        return None
    return ref if ref and ref.isprintable() else None
