"""The SOCI index manifest (soci-snapshotter's ``docs/soci-index.md``), v1 and v2.

An OCI image manifest whose config is the empty JSON ``{}`` typed with the index's
version (``application/vnd.amazon.soci.index.v1+json`` or ``...v2+json``), whose layers
are the zTOCs (``application/octet-stream``, each annotated with the digest and media
type of the image layer it indexes, in the image's layer order). A v1 index names the
image manifest as its ``subject``, so the referrers API (or the referrers tag) finds it
from the image's digest; a v2 index has no subject: the image manifest names it instead
(:mod:`lazypull.soci.v2`).
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


def config_descriptor(artifact_type: str = mt.SOCI_INDEX_ARTIFACT_TYPE) -> Descriptor:
    return Descriptor(artifact_type, digestlib.of_bytes(EMPTY_CONFIG), len(EMPTY_CONFIG))


@dataclass
class SociIndex:
    subject: Descriptor | None  # v1: the image manifest; v2: None
    ztocs: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=lambda: {mt.ANNOTATION_SOCI_BUILD_TOOL: BUILD_TOOL})
    artifact_type: str = mt.SOCI_INDEX_ARTIFACT_TYPE

    @property
    def is_v2(self) -> bool:
        return self.artifact_type == mt.SOCI_INDEX_V2_ARTIFACT_TYPE

    def to_bytes(self) -> bytes:
        obj: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST}
        if not self.is_v2:  # soci writes v2 indexes without the field (their config type says it)
            obj["artifactType"] = self.artifact_type
        obj["config"] = config_descriptor(self.artifact_type).to_json()
        obj["layers"] = [z.to_json() for z in self.ztocs]
        if self.subject is not None:
            obj["subject"] = self.subject.to_json()
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
            extra={"artifactType": self.artifact_type},
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
        if config.media_type not in mt.SOCI_INDEX_ARTIFACT_TYPES:
            raise OCIError(f"not a SOCI index (config media type {config.media_type!r})")
        v2 = config.media_type == mt.SOCI_INDEX_V2_ARTIFACT_TYPE
        if not v2 and "subject" not in obj:
            raise OCIError("SOCI index has no subject")
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise OCIError("SOCI index has no layers list")
        ztocs = [d for d in (Descriptor.from_json(x) for x in layers) if d.media_type == mt.SOCI_ZTOC]
        ann = obj.get("annotations") or {}
        return cls(
            None if v2 else Descriptor.from_json(obj["subject"]),
            ztocs,
            {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {},
            config.media_type,
        )
