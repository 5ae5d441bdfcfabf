"""The prefetch profile: per layer, the files a workload read and the byte ranges of each,
in first-access order, with the median time of that first access.

A small versioned JSON body::

    {"version": 1, "image": "sha256:<image manifest>", "runs": 3,
     "layers": [{"digest": "sha256:<layer>",
                 "files": [{"path": "usr/bin/python3", "t": 0.012, "ranges": [[0, 65536]]}]}]}

``t`` is seconds from the first read of the run; ``ranges`` are ``[offset, length]`` of
the file's uncompressed content (none: the whole file), so one profile serves eStargz,
zstd:chunked and SOCI layers alike. A profile comes from a registry, so it is a hint and
never trusted: it is read within fixed bounds (body size, files, ranges, path length) and
anything outside them makes it malformed as a whole.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lazypull.errors import LazypullError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt

ARTIFACT_TYPE = mt.PREFETCH_PROFILE_ARTIFACT_TYPE
VERSION = 1
MAX_BYTES = 4 << 20  # the body; a registry's answer is refused beyond this before it is decoded
MAX_LAYERS = 256
MAX_FILES = 20_000  # in the whole profile
MAX_RANGES = 64  # per file; a recorder coarsens beyond this
MAX_PATH = 4096


class ProfileError(LazypullError):
    """A profile body that is not a valid, bounded profile of this version."""


Range = tuple[int, int]  # (offset, length) in the file's uncompressed content


@dataclass(frozen=True)
class FileAccess:
    path: str  # normalized: no leading "/", as in layer indexes
    t: float  # seconds from the run's first read to this file's
    ranges: tuple[Range, ...] = ()  # () = the whole file


@dataclass
class Profile:
    image: str  # the image manifest digest the profile was recorded for
    layers: dict[str, list[FileAccess]] = field(default_factory=dict)  # layer digest -> files, by t
    runs: int = 1

    @property
    def file_count(self) -> int:
        return sum(len(f) for f in self.layers.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "image": self.image,
            "runs": self.runs,
            "layers": [
                {"digest": d, "files": [_file_json(f) for f in files]} for d, files in self.layers.items() if files
            ],
        }

    def to_bytes(self) -> bytes:
        data = json.dumps(self.to_json(), separators=(",", ":")).encode()
        if len(data) > MAX_BYTES:
            raise ProfileError(f"profile is {len(data)} bytes, over the {MAX_BYTES} byte limit")
        return data

    @classmethod
    def parse(cls, data: bytes) -> Profile:
        """Decode and check a profile body; raises ProfileError on anything out of bounds."""
        if len(data) > MAX_BYTES:
            raise ProfileError(f"profile is {len(data)} bytes, over the {MAX_BYTES} byte limit")
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ProfileError(f"profile is not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise ProfileError("profile is not a JSON object")
        if obj.get("version") != VERSION:
            raise ProfileError(f"profile version {obj.get('version')!r} is not {VERSION}")
        image = obj.get("image")
        if not isinstance(image, str) or not digestlib.is_valid(image):
            raise ProfileError("profile names no valid image digest")
        runs = obj.get("runs", 1)
        if not isinstance(runs, int) or isinstance(runs, bool) or not 1 <= runs <= 1 << 20:
            raise ProfileError(f"profile has an invalid run count {runs!r}")
        layers = obj.get("layers")
        if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
            raise ProfileError(f"profile layers must be a list of at most {MAX_LAYERS}")
        out = cls(image, runs=runs)
        total = 0
        for layer in layers:
            if not isinstance(layer, dict):
                raise ProfileError("profile layer is not an object")
            digest, files = layer.get("digest"), layer.get("files")
            if not isinstance(digest, str) or not digestlib.is_valid(digest) or digest in out.layers:
                raise ProfileError(f"profile layer digest {digest!r} is invalid or repeated")
            if not isinstance(files, list):
                raise ProfileError(f"profile layer {digest} has no files list")
            total += len(files)
            if total > MAX_FILES:
                raise ProfileError(f"profile names more than {MAX_FILES} files")
            out.layers[digest] = sorted((_parse_file(f) for f in files), key=lambda f: f.t)
        return out


def _file_json(f: FileAccess) -> dict[str, Any]:
    d: dict[str, Any] = {"path": f.path, "t": round(f.t, 6)}
    if f.ranges:
        d["ranges"] = [list(r) for r in f.ranges]
    return d


def _parse_file(obj: Any) -> FileAccess:
    if not isinstance(obj, dict):
        raise ProfileError("profile file entry is not an object")
    path, t, ranges = obj.get("path"), obj.get("t", 0.0), obj.get("ranges") or []
    if not isinstance(path, str) or not path or len(path) > MAX_PATH:
        raise ProfileError("profile file entry has no valid path")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t < 0:
        raise ProfileError(f"profile file {path!r} has an invalid time {t!r}")
    if not isinstance(ranges, list) or len(ranges) > MAX_RANGES:
        raise ProfileError(f"profile file {path!r}: ranges must be a list of at most {MAX_RANGES}")
    parsed: list[Range] = []
    for r in ranges:
        if (
            not isinstance(r, list)
            or len(r) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 62 for x in r)
            or r[1] == 0
        ):
            raise ProfileError(f"profile file {path!r} has an invalid range {r!r}")
        parsed.append((r[0], r[1]))
    return FileAccess(normalize_path(path), float(t), merge_ranges(parsed))


def normalize_path(path: str) -> str:
    """Layer-index form: no leading "/" or "./", no empty or "." components."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return "/".join(parts)


def merge_ranges(ranges: Iterable[Range], limit: int = MAX_RANGES) -> tuple[Range, ...]:
    """Sorted, overlapping and touching ranges joined; beyond *limit*, the closest ones are
    joined too (a coarser hint, never a lost one)."""
    spans = sorted((o, o + n) for o, n in ranges if n > 0)
    joined: list[list[int]] = []
    for start, end in spans:
        if joined and start <= joined[-1][1]:
            joined[-1][1] = max(joined[-1][1], end)
        else:
            joined.append([start, end])
    while len(joined) > limit:
        gaps = [joined[i + 1][0] - joined[i][1] for i in range(len(joined) - 1)]
        i = gaps.index(min(gaps))
        joined[i : i + 2] = [[joined[i][0], joined[i + 1][1]]]
    return tuple((s, e - s) for s, e in joined)


def merge(profiles: list[Profile], image: str | None = None) -> Profile:
    """The union of several runs' profiles of one image: every file any of them read, with
    the union of its ranges, ordered by the median of its first-access times (a file read
    early in most runs goes first); a file whole in one run is whole in the result."""
    if not profiles:
        raise ProfileError("nothing to merge")
    image = image or profiles[0].image
    if any(p.image != image for p in profiles):
        raise ProfileError(f"profiles of different images cannot be merged (want {image})")
    times: dict[str, dict[str, list[float]]] = {}
    ranges: dict[str, dict[str, list[Range] | None]] = {}
    for p in profiles:
        for layer, files in p.layers.items():
            lt, lr = times.setdefault(layer, {}), ranges.setdefault(layer, {})
            for f in files:
                lt.setdefault(f.path, []).extend([f.t] * min(p.runs, 64))
                have = lr.get(f.path, [])
                lr[f.path] = None if have is None or not f.ranges else [*have, *f.ranges]
    out = Profile(image, runs=sum(p.runs for p in profiles))
    budget = MAX_FILES
    entries = [(statistics.median(ts), layer, path) for layer, paths in times.items() for path, ts in paths.items()]
    for t, layer, path in sorted(entries)[:budget]:
        rs = ranges[layer][path]
        out.layers.setdefault(layer, []).append(FileAccess(path, t, merge_ranges(rs) if rs else ()))
    return out
