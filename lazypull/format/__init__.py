"""Layer formats: eStargz (and legacy stargz), zstd:chunked. Pure code over byte sources."""

from lazypull.format.estargz_reader import open_estargz
from lazypull.format.estargz_writer import BuildResult, build_estargz
from lazypull.format.index import Chunk, Entry, EntryType, LayerIndex
from lazypull.format.source import BytesSource, FileSource, ReadAt

__all__ = [
    "BuildResult",
    "BytesSource",
    "Chunk",
    "Entry",
    "EntryType",
    "FileSource",
    "LayerIndex",
    "ReadAt",
    "build_estargz",
    "open_estargz",
]
