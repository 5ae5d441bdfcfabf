"""OCI/Docker descriptors, manifests, indexes and image configs as plain data.

Parsing keeps unknown fields (``extra``) so that a manifest round-trips without losing
what another tool put there; serialisation is canonical (sorted keys are *not* used:
field order follows the spec, as other tools write it) and deterministic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lazypull.errors import InvalidDigestError, OCIError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt

MAX_MANIFEST_BYTES = 4 << 20  # the distribution spec's suggested manifest limit


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]`` (e.g. ``linux/arm64/v8``)."""
        parts = text.strip().split("/")
        if len(parts) < 2 or len(parts) > 3 or not all(parts):
            raise OCIError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Platform:
        return cls(
            os=str(d.get("os", "")),
            architecture=str(d.get("architecture", "")),
            variant=str(d.get("variant", "")),
            os_version=str(d.get("os.version", "")),
        )

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            d["os.version"] = self.os_version
        if self.variant:
            d["variant"] = self.variant
        return d

    def matches(self, other: Platform) -> bool:
        """True if *other* (an index entry) satisfies this requested platform."""
        if self.os != other.os or self.architecture != other.architecture:
            return False
        if not self.variant:
            return True
        # arm64 images commonly omit "v8"
        return self.variant == (other.variant or ("v8" if other.architecture == "arm64" else ""))

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def host_platform() -> Platform:
    import platform as _p

    machine = _p.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)
    return Platform("linux", arch, "v7" if arch == "arm" else "")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Any) -> Descriptor:
        if not isinstance(d, dict):
            raise OCIError("descriptor is not a JSON object")
        try:
            media_type = str(d["mediaType"])
            dg = digestlib.validate(str(d["digest"]))
            size = d["size"]
        except KeyError as e:
            raise OCIError(f"descriptor misses field {e.args[0]!r}") from None
        except InvalidDigestError as e:
            raise OCIError(f"descriptor: {e}") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise OCIError(f"descriptor {dg} has invalid size {size!r}")
        ann = d.get("annotations") or {}
        if not isinstance(ann, dict):
            raise OCIError(f"descriptor {dg} has invalid annotations")
        plat = d.get("platform")
        known = {"mediaType", "digest", "size", "annotations", "platform", "urls"}
        return cls(
            media_type=media_type,
            digest=dg,
            size=size,
            annotations={str(k): str(v) for k, v in ann.items()},
            platform=Platform.from_json(plat) if isinstance(plat, dict) else None,
            urls=tuple(d.get("urls") or ()),
            extra={k: v for k, v in d.items() if k not in known},
        )

    @property
    def is_soci_index(self) -> bool:
        """A SOCI index listed in an image index (v2 packages it there, typed like an image
        manifest for the image's platform): never the image to run."""
        return self.extra.get("artifactType") in mt.SOCI_INDEX_ARTIFACT_TYPES

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            d["urls"] = list(self.urls)
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform is not None:
            d["platform"] = self.platform.to_json()
        d.update(self.extra)
        return d


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_MANIFEST_BYTES:
        raise OCIError(f"{what} is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} byte limit")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        # Documents are fetched by digest: naming it says which blob (or file) is broken.
        raise OCIError(f"{what} {digestlib.of_bytes(data)} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise OCIError(f"{what} is not a JSON object")
    return obj


def dump_json(obj: dict[str, Any]) -> bytes:
    """Serialise a manifest/index/config deterministically (compact, as containerd writes)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Manifest:
    config: Descriptor
    layers: list[Descriptor]
    media_type: str = mt.OCI_MANIFEST
    annotations: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes, media_type: str | None = None) -> Manifest:
        obj = _load_json(data, "manifest")
        mtype = obj.get("mediaType") or media_type or mt.OCI_MANIFEST
        if mtype not in mt.MANIFEST_TYPES:
            raise OCIError(f"unsupported manifest media type {mtype!r}")
        if obj.get("schemaVersion") != 2:
            raise OCIError(f"unsupported manifest schemaVersion {obj.get('schemaVersion')!r}")
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise OCIError("manifest has no layers list")
        known = {"schemaVersion", "mediaType", "config", "layers", "annotations"}
        return cls(
            config=Descriptor.from_json(obj.get("config")),
            layers=[Descriptor.from_json(x) for x in layers],
            media_type=mtype,
            annotations={str(k): str(v) for k, v in (obj.get("annotations") or {}).items()},
            extra={k: v for k, v in obj.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        d.update({k: v for k, v in self.extra.items() if k == "artifactType"})
        d["config"] = self.config.to_json()
        d["layers"] = [x.to_json() for x in self.layers]
        d.update({k: v for k, v in self.extra.items() if k != "artifactType"})
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d

    def to_bytes(self) -> bytes:
        return dump_json(self.to_json())


@dataclass
class Index:
    manifests: list[Descriptor]
    media_type: str = mt.OCI_INDEX
    annotations: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes, media_type: str | None = None) -> Index:
        obj = _load_json(data, "index")
        mtype = obj.get("mediaType") or media_type or mt.OCI_INDEX
        if mtype not in mt.INDEX_TYPES:
            raise OCIError(f"unsupported index media type {mtype!r}")
        if obj.get("schemaVersion") != 2:
            raise OCIError(f"unsupported index schemaVersion {obj.get('schemaVersion')!r}")
        ms = obj.get("manifests")
        if not isinstance(ms, list):
            raise OCIError("index has no manifests list")
        known = {"schemaVersion", "mediaType", "manifests", "annotations"}
        return cls(
            manifests=[Descriptor.from_json(x) for x in ms],
            media_type=mtype,
            annotations={str(k): str(v) for k, v in (obj.get("annotations") or {}).items()},
            extra={k: v for k, v in obj.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        d["manifests"] = [x.to_json() for x in self.manifests]
        d.update(self.extra)
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d

    def to_bytes(self) -> bytes:
        return dump_json(self.to_json())

    def select(self, platform: Platform) -> Descriptor:
        """The first manifest for *platform*, or a clear error listing what exists."""
        for d in self.manifests:
            if d.platform is not None and platform.matches(d.platform) and not d.is_soci_index:
                return d
        have = ", ".join(str(d.platform) for d in self.manifests if d.platform) or "none"
        raise OCIError(f"no manifest for platform {platform} (index has: {have})")


@dataclass
class ImageConfig:
    """An image config; only ``rootfs.diff_ids`` is interpreted, the rest is kept as is."""

    raw: dict[str, Any]

    @classmethod
    def parse(cls, data: bytes) -> ImageConfig:
        obj = _load_json(data, "image config")
        rootfs = obj.get("rootfs")
        if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
            raise OCIError("image config has no rootfs.diff_ids")
        for d in rootfs["diff_ids"]:
            digestlib.validate(str(d))
        return cls(obj)

    @property
    def diff_ids(self) -> list[str]:
        return list(self.raw["rootfs"]["diff_ids"])

    @diff_ids.setter
    def diff_ids(self, ids: list[str]) -> None:
        self.raw["rootfs"]["diff_ids"] = list(ids)

    @property
    def platform(self) -> Platform:
        return Platform(
            str(self.raw.get("os", "")), str(self.raw.get("architecture", "")), str(self.raw.get("variant", ""))
        )

    def to_bytes(self) -> bytes:
        return dump_json(self.raw)


def is_index(media_type: str) -> bool:
    return media_type in mt.INDEX_TYPES


def is_foreign_layer(media_type: str) -> bool:
    """Non-distributable (Docker "foreign") layers: their content is not the registry's to serve."""
    return ".nondistributable." in media_type or ".foreign." in media_type


def is_manifest(media_type: str) -> bool:
    return media_type in mt.MANIFEST_TYPES


def sniff_media_type(data: bytes) -> str:
    """Media type of a manifest or index document that may not declare one."""
    obj = _load_json(data, "manifest")
    if obj.get("mediaType"):
        return str(obj["mediaType"])
    if "manifests" in obj:
        return mt.OCI_INDEX
    if "layers" in obj:
        return mt.OCI_MANIFEST
    raise OCIError("document is neither a manifest nor an index")
