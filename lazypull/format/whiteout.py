"""OCI whiteouts (``.wh.NAME`` deletes NAME from lower layers; ``.wh..wh..opq`` makes a
directory opaque), parsed in one place for every reader: a whiteout's target is a plain
name in the same directory, never ``.``, ``..``, empty or containing ``/``."""

from __future__ import annotations

from lazypull.errors import FormatError

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"


def whiteout_target(name: str) -> str | None:
    """The path a whiteout entry *name* deletes, None if *name* is not a whiteout (or is an
    opaque marker); FormatError for a whiteout that would reach outside its directory."""
    parent, _, base = name.rpartition("/")
    if not base.startswith(WHITEOUT_PREFIX) or base == OPAQUE:
        return None
    target = base[len(WHITEOUT_PREFIX) :]
    if target in ("", ".", "..") or "/" in target or "\0" in target:
        raise FormatError(f"invalid whiteout {name[:200]!r}: its target must be a name in the same directory")
    return f"{parent}/{target}" if parent else target


def is_whiteout(name: str) -> bool:
    return name.rpartition("/")[2].startswith(WHITEOUT_PREFIX)
