"""Layer formats: eStargz (and legacy stargz), zstd:chunked. Pure code over byte sources."""

from lazypull.format.estargz_reader import open_estargz
from lazypull.format.estargz_writer import BuildResult, build_estargz
from lazypull.format.index import Chunk, Entry, EntryType, LayerIndex
from lazypull.format.limits import DEFAULT_LIMITS, Limits
from lazypull.source import BytesSource, FileSource, ReadAt

__all__ = [
    "DEFAULT_LIMITS",
    "BuildResult",
    "BytesSource",
    "Chunk",
    "Entry",
    "EntryType",
    "FileSource",
    "LayerIndex",
    "Limits",
    "ReadAt",
    "build_estargz",
    "open_estargz",
    "open_layer",
]


def open_layer(source: ReadAt, *, toc_digest: str | None = None, limits: Limits = DEFAULT_LIMITS) -> LayerIndex:
    """Open an eStargz/stargz or zstd:chunked blob, choosing by its footer (*limits* bound
    what its TOC may declare)."""
    from lazypull.format.zstdchunked import is_zstdchunked, open_zstdchunked

    tail = source.read_at(max(source.size - 8, 0), min(source.size, 8))
    if is_zstdchunked(tail):
        return open_zstdchunked(source, toc_digest=toc_digest, limits=limits)
    return open_estargz(source, toc_digest=toc_digest, limits=limits)
