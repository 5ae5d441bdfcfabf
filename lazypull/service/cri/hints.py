"""The pod's prefetch hint: which files to fetch before its containers start.

```yaml
metadata:
  annotations:
    io.containerd.image.prefetch: |
      ["/app/app", "/app/config/*", "/usr/lib/x86_64-linux-gnu/libssl.so.3"]
```

A JSON list of absolute paths and globs (``*`` and ``?`` stay inside one path component,
``[...]`` is a character class, ``**`` spans directories). A path naming a directory
means everything under it. A malformed hint is an error here; the caller logs it and
pulls as usual.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from lazypull.errors import LazypullError

ANNOTATION = "io.containerd.image.prefetch"
MAX_PATTERNS = 256
MAX_PATTERN_LEN = 4096


class HintError(LazypullError):
    """The prefetch annotation is not a JSON list of absolute paths/globs."""


@dataclass(frozen=True)
class Pattern:
    text: str  # as written
    regex: re.Pattern[str]  # matches normalised layer paths (no leading '/')
    literal: bool  # no glob characters: may also name a directory

    def matches(self, path: str) -> bool:
        if self.regex.fullmatch(path):
            return True
        # A plain directory path prefetches its subtree.
        prefix = self.text.strip("/")
        return self.literal and (prefix == "" or path.startswith(prefix + "/"))


def _translate(glob: str) -> str:
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = glob.find("]", i + 2 if glob[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j < 0:
                raise HintError(f"unclosed '[' in prefetch hint {glob!r}")
            body = glob[i + 1 : j]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\").replace("/", "") + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def compile_pattern(text: str) -> Pattern:
    if not isinstance(text, str) or not text.startswith("/"):
        raise HintError(f"prefetch hint {str(text)[:100]!r} is not an absolute path")
    if len(text) > MAX_PATTERN_LEN or "\x00" in text:
        raise HintError("prefetch hint too long or contains NUL")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise HintError(f"prefetch hint {text[:100]!r} contains '..'")
    norm = "/".join(parts)
    literal = not any(ch in norm for ch in "*?[")
    try:
        regex = re.compile(_translate(norm))
    except re.error as e:
        raise HintError(f"prefetch hint {text[:100]!r} is not a valid glob: {e}") from None
    return Pattern(text, regex, literal)


def parse_hints(value: str) -> list[Pattern]:
    """The patterns of an annotation value; raises HintError when it is malformed."""
    try:
        obj = json.loads(value)
    except ValueError as e:
        raise HintError(f"prefetch hint is not JSON: {e}") from None
    if not isinstance(obj, list) or not all(isinstance(x, str) for x in obj):
        raise HintError("prefetch hint must be a JSON list of strings")
    if len(obj) > MAX_PATTERNS:
        raise HintError(f"prefetch hint has {len(obj)} entries (at most {MAX_PATTERNS})")
    return [compile_pattern(x) for x in obj]


def hint_value(*annotation_maps: Mapping[str, str]) -> str | None:
    """The hint from the first map carrying it (the pod's annotations, then the image spec's)."""
    for m in annotation_maps:
        if ANNOTATION in m:
            return m[ANNOTATION]
    return None
