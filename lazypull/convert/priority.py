"""Prioritized-file lists: the reference's record file and prefetch profiles.

Both produce an ordered list of paths that the layer writer moves to the front of each
layer, before the ``.prefetch.landmark``.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable
from pathlib import Path

from lazypull.errors import LazypullError
from lazypull.format.index import normalize

MAX_LIST_BYTES = 256 << 20  # a record or profile larger than this is not a file list


def _read_text(path: Path, what: str) -> str:
    """A small UTF-8 text file, or one clear error (binary files, directories, missing files)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_LIST_BYTES + 1)
    except OSError as e:
        raise LazypullError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > MAX_LIST_BYTES:
        raise LazypullError(f"{what} {path} is over {MAX_LIST_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LazypullError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None


def read_record(path: Path) -> list[str]:
    """Paths from a record file: one JSON object per line with a "path" key (order kept, deduped)."""
    out: list[str] = []
    seen: set[str] = set()
    lines = _read_text(path, "record file").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise LazypullError(f'{path}:{n}: not a JSON object (expected {{"path": ...}} per line)') from None
        p = obj.get("path") if isinstance(obj, dict) else None
        if not isinstance(p, str) or not p:
            raise LazypullError(f'{path}:{n}: entry has no "path" string')
        key = normalize(p)
        if key and key not in seen:
            seen.add(key)
            out.append(key)
    return out


class PrefetchProfile:
    """``{"prefetch": {"landmarks": [paths], "patterns": [globs]}}``."""

    def __init__(self, landmarks: list[str], patterns: list[str]) -> None:
        self.landmarks = [normalize(p) for p in landmarks if normalize(p)]
        self.patterns = [normalize(p) for p in patterns]

    @classmethod
    def load(cls, path: Path) -> PrefetchProfile:
        try:
            obj = json.loads(_read_text(path, "prefetch profile"))
        except ValueError as e:
            raise LazypullError(f"prefetch profile {path} is not valid JSON: {e}") from None
        pf = obj.get("prefetch") if isinstance(obj, dict) else None
        if not isinstance(pf, dict):
            raise LazypullError(f'prefetch profile {path} needs a top-level "prefetch" object')
        landmarks, patterns = pf.get("landmarks", []), pf.get("patterns", [])
        if not isinstance(landmarks, list) or not isinstance(patterns, list):
            raise LazypullError(f"prefetch profile {path}: landmarks and patterns must be lists of strings")
        if not all(isinstance(x, str) for x in [*landmarks, *patterns]):
            raise LazypullError(f"prefetch profile {path}: landmarks and patterns must be lists of strings")
        return cls(list(landmarks), list(patterns))

    def expand(self, layer_names: Iterable[str]) -> list[str]:
        """Landmarks in order, then names of *layer_names* (tar order) matching a pattern."""
        out = list(dict.fromkeys(self.landmarks))
        seen = set(out)
        if self.patterns:
            for name in layer_names:
                n = normalize(name)
                if n not in seen and any(fnmatch.fnmatchcase(n, p) for p in self.patterns):
                    seen.add(n)
                    out.append(n)
        return out
