"""The eStargz TOC (``stargz.index.json``): model, JSON encoding and validation.

The JSON matches the reference writer field for field (names, order, omitempty,
tab-indented), so TOCs written here and by ``ctr-remote`` compare equal entry by entry.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lazypull.errors import FormatError

TOC_TAR_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENTS = b"\x0f"

ENTRY_TYPES = frozenset({"dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk"})

# JSON field order of the reference TOCEntry (all omitempty except name/type).
_FIELDS: tuple[tuple[str, str], ...] = (
    ("size", "size"),
    ("modtime", "modtime"),
    ("link_name", "linkName"),
    ("mode", "mode"),
    ("uid", "uid"),
    ("gid", "gid"),
    ("uname", "userName"),
    ("gname", "groupName"),
    ("dev_major", "devMajor"),
    ("dev_minor", "devMinor"),
    ("xattrs", "xattrs"),
    ("digest", "digest"),
    ("offset", "offset"),
    ("inner_offset", "innerOffset"),
    ("chunk_offset", "chunkOffset"),
    ("chunk_size", "chunkSize"),
    ("chunk_digest", "chunkDigest"),
)
_INT_FIELDS = frozenset(
    {"size", "mode", "uid", "gid", "dev_major", "dev_minor", "offset", "inner_offset", "chunk_offset", "chunk_size"}
)
_STR_FIELDS = frozenset({"modtime", "link_name", "uname", "gname", "digest", "chunk_digest"})
_JSON_TO_ATTR = {j: a for a, j in _FIELDS}
_MAX_INT = 1 << 62


@dataclass(slots=True)
class TOCEntry:
    name: str
    type: str
    size: int = 0
    modtime: str = ""
    link_name: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    digest: str = ""
    offset: int = 0
    inner_offset: int = 0
    chunk_offset: int = 0
    chunk_size: int = 0
    chunk_digest: str = ""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type}
        for attr, key in _FIELDS:
            v = getattr(self, attr)
            if not v:
                continue
            if attr == "xattrs":
                v = {k: base64.b64encode(x).decode() for k, x in v.items()}
            d[key] = v
        return d

    @classmethod
    def from_json(cls, obj: Any, index: int) -> TOCEntry:
        if type(obj) is not dict:
            raise FormatError(f"TOC entry #{index} is not an object")
        name, typ = obj.get("name"), obj.get("type")
        if type(name) is not str or type(typ) is not str:
            raise FormatError(f"TOC entry #{index} lacks a string name/type")
        if typ not in ENTRY_TYPES:
            raise FormatError(f"TOC entry {name!r} has unknown type {typ!r}")
        kw: dict[str, Any] = {}
        for key, v in obj.items():
            attr = _JSON_TO_ATTR.get(key)
            if attr is None:
                continue  # name/type, or unknown fields (ignored, as the reference does)
            if attr in _INT_FIELDS:
                if type(v) is not int or v < 0 or v > _MAX_INT:
                    raise FormatError(f"TOC entry {name!r}: field {key!r} is not a valid integer: {v!r}")
            elif attr in _STR_FIELDS:
                if type(v) is not str:
                    raise FormatError(f"TOC entry {name!r}: field {key!r} is not a string")
            else:  # xattrs
                v = _decode_xattrs(name, v)
            kw[attr] = v
        return cls(name, typ, **kw)


def _decode_xattrs(name: str, v: Any) -> dict[str, bytes]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise FormatError(f"TOC entry {name!r}: xattrs is not an object")
    out: dict[str, bytes] = {}
    for k, x in v.items():
        if not isinstance(x, str):
            raise FormatError(f"TOC entry {name!r}: xattr {k!r} is not base64 text")
        try:
            out[str(k)] = base64.b64decode(x, validate=True)
        except (binascii.Error, ValueError):
            raise FormatError(f"TOC entry {name!r}: xattr {k!r} is not valid base64") from None
    return out


@dataclass
class TOC:
    version: int = 1
    entries: list[TOCEntry] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """Tab-indented JSON as the reference writes it (Go's MarshalIndent(toc, "", "\\t"))."""
        obj = {"version": self.version, "entries": [e.to_json() for e in self.entries]}
        return json.dumps(obj, indent="\t", ensure_ascii=False, separators=(",", ": ")).encode()

    @classmethod
    def parse(cls, data: bytes) -> TOC:
        return cls(version=1, entries=list(iter_entries(data)))


def iter_entries(data: bytes) -> Iterator[TOCEntry]:
    """Validated entries of a TOC document, one at a time.

    Each parsed JSON object is released as soon as its entry is made, so a huge TOC never
    sits in memory twice (dicts and entries)."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise FormatError(f"TOC is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise FormatError("TOC is not a JSON object")
    version = obj.get("version")
    if version != 1:
        raise FormatError(f"unsupported TOC version {version!r} (expected 1)")
    entries = obj.get("entries")
    if entries is None:
        return
    if not isinstance(entries, list):
        raise FormatError("TOC entries is not a list")
    del obj
    for i in range(len(entries)):
        raw, entries[i] = entries[i], None
        yield TOCEntry.from_json(raw, i)


def format_modtime(epoch_seconds: float) -> str:
    """RFC3339 in UTC with whole seconds, as Go's time.RFC3339 (empty for the zero time)."""
    if epoch_seconds == 0:
        return ""
    return datetime.fromtimestamp(int(epoch_seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_modtime_ns(text: str) -> int:
    if not text:
        return 0
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FormatError(f"invalid modtime {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000
