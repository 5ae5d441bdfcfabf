"""The SOCI index manifest (soci-snapshotter's ``docs/soci-index.md``, index manifest v1).

An OCI image manifest whose config is the empty JSON ``{}`` typed
``application/vnd.amazon.soci.index.v1+json``, whose layers are the zTOCs
(``application/octet-stream``, each annotated with the digest and media type of the
image layer it indexes, in the image's layer order) and whose ``subject`` is the image
manifest, so the referrers API (or the referrers tag) finds it from the image's digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lazypull.errors import OCIError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor, dump_json

EMPTY_CONFIG = b"{}"
BUILD_TOOL = "lazypull"
MAX_INDEX_BYTES = 4 << 20


def config_descriptor() -> Descriptor:
    return Descriptor(mt.SOCI_INDEX_ARTIFACT_TYPE, digestlib.of_bytes(EMPTY_CONFIG), len(EMPTY_CONFIG))


@dataclass
class SociIndex:
    subject: Descriptor
    ztocs: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=lambda: {mt.ANNOTATION_SOCI_BUILD_TOOL: BUILD_TOOL})

    def to_bytes(self) -> bytes:
        obj: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": mt.SOCI_INDEX_ARTIFACT_TYPE,
            "config": config_descriptor().to_json(),
            "layers": [z.to_json() for z in self.ztocs],
            "subject": self.subject.to_json(),
        }
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        return dump_json(obj)

    def descriptor(self, data: bytes) -> Descriptor:
        """How the index is listed among the subject's referrers."""
        return Descriptor(
            mt.OCI_MANIFEST,
            digestlib.of_bytes(data),
            len(data),
            annotations=dict(self.annotations),
            extra={"artifactType": mt.SOCI_INDEX_ARTIFACT_TYPE},
        )

    @classmethod
    def parse(cls, data: bytes) -> SociIndex:
        if len(data) > MAX_INDEX_BYTES:
            raise OCIError(f"SOCI index is {len(data)} bytes, over the {MAX_INDEX_BYTES} byte limit")
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise OCIError(f"SOCI index is not valid JSON: {e}") from None
        if not isinstance(obj, dict) or obj.get("schemaVersion") != 2:
            raise OCIError("SOCI index is not a schema 2 manifest")
        config = Descriptor.from_json(obj.get("config"))
        if config.media_type != mt.SOCI_INDEX_ARTIFACT_TYPE:
            raise OCIError(f"not a SOCI index (config media type {config.media_type!r})")
        if "subject" not in obj:
            raise OCIError("SOCI index has no subject")
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise OCIError("SOCI index has no layers list")
        ztocs = [d for d in (Descriptor.from_json(x) for x in layers) if d.media_type == mt.SOCI_ZTOC]
        ann = obj.get("annotations") or {}
        return cls(
            Descriptor.from_json(obj["subject"]),
            ztocs,
            {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {},
        )
