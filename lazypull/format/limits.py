"""Bounds on what a layer may declare, so a crafted blob costs bounded memory and time.

Everything inside a blob (TOC, names, sizes, digests, links) is untrusted: a few MB can
declare millions of entries or terabyte files. The defaults admit real images (a
100k-entry layer uses a third of them) and keep what a crafted blob can make a process
hold under 512 MB; beyond them, one clear line names the limit. Pass a different
:class:`Limits` to ``open_layer`` to change them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lazypull.errors import FormatError


@dataclass(frozen=True)
class Limits:
    max_toc_bytes: int = 64 << 20  # TOC JSON, compressed and uncompressed
    # TOC entries (files, dirs, links, chunk records). Opening a layer peaks at ~1.3 KB per
    # entry at worst (300k crafted entries: 390 MB, before the index becomes a file); real
    # TOCs reach the 64 MiB JSON limit at about 190k files (357 bytes per entry as the
    # reference writes them) anyway.
    max_entries: int = 300_000
    max_name_bytes: int = 4096  # a path or link target (Linux PATH_MAX)
    max_depth: int = 1024  # directories in one path
    max_chunk_bytes: int = 64 << 20  # what one chunk may inflate to (the reference writes 4 MiB)
    # Called with (TOC bytes, an upper bound on its entries) before the entries are decoded:
    # a process opening many layers (the layer server) waits here for memory, or refuses.
    admit: Callable[[int, int], None] | None = field(default=None, compare=False)


DEFAULT_LIMITS = Limits()

# The most a compressed byte can expand to, plus room for headers: deflate cannot exceed
# 1032:1; zstd's densest block (RLE, 3-byte header + 1 byte) gives 128 KiB.
GZIP_MAX_RATIO = 1032
ZSTD_MAX_RATIO = 32768
RATIO_SLACK = 4096


def check_path(name: str, what: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise unless *name* is within the length and depth limits (no recursion anywhere)."""
    n = len(name)
    if n > limits.max_name_bytes or (
        n * 4 > limits.max_name_bytes and len(name.encode("utf-8", "surrogateescape")) > limits.max_name_bytes
    ):
        raise FormatError(f"{what} {name[:100]!r}... is longer than {limits.max_name_bytes} bytes (max_name_bytes)")
    if name.count("/") >= limits.max_depth:
        raise FormatError(f"{what} {name[:100]!r}... is more than {limits.max_depth} directories deep (max_depth)")
