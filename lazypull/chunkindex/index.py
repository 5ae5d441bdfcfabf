"""The chunk index's referrer manifest: an OCI manifest whose one layer is the index blob
(:mod:`lazypull.format.chunklist`), whose ``subject`` is the artifact manifest and whose
``artifactType`` is ``CHUNK_INDEX_ARTIFACT_TYPE``. Found through the referrers API (or the
referrers tag schema) as SOCI indexes are, and pushed by the same code.
"""

from __future__ import annotations

import json
from typing import Any

from lazypull.errors import OCIError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor, dump_json

EMPTY_CONFIG = b"{}"


def index_manifest(subject: Descriptor, layer: Descriptor) -> bytes:
    """The referrer manifest that carries the index blob *layer* for the artifact *subject*."""
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": mt.CHUNK_INDEX_ARTIFACT_TYPE,
        "config": config_descriptor().to_json(),
        "layers": [layer.to_json()],
        "subject": Descriptor(subject.media_type, subject.digest, subject.size).to_json(),
    }
    return dump_json(obj)


def config_descriptor() -> Descriptor:
    return Descriptor(mt.OCI_EMPTY, digestlib.of_bytes(EMPTY_CONFIG), len(EMPTY_CONFIG))


def manifest_index_layer(data: bytes, subject_digest: str) -> Descriptor:
    """The index blob's descriptor in a referrer manifest, checked to name *subject_digest*."""
    try:
        obj = json.loads(data)
        subject = Descriptor.from_json(obj["subject"])
        layers = [Descriptor.from_json(x) for x in obj["layers"]]
    except (ValueError, KeyError, TypeError) as e:
        raise OCIError(f"chunk index manifest is malformed: {e}") from None
    if subject.digest != subject_digest:
        raise OCIError(f"chunk index manifest names subject {subject.digest}, not {subject_digest}")
    found = [d for d in layers if d.media_type == mt.CHUNK_INDEX_LAYER]
    if len(found) != 1:
        raise OCIError("chunk index manifest has no index layer")
    return found[0]
