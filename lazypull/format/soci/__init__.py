"""SOCI: lazy pulling of unmodified gzip layers through zTOCs (soci-snapshotter's format).

zTOCs cover gzip layers only (the format's compression info is gzip checkpoints; its
``Uncompressed`` algorithm value is unused by soci-snapshotter): zstd and uncompressed
layers have no zTOC and are fetched whole.
"""

from lazypull.format.soci.build import DEFAULT_SPAN_SIZE, build_ztoc_bytes, build_ztoc_file
from lazypull.format.soci.layer import SociIndex, open_soci
from lazypull.format.soci.ztoc import FileMetadata, Ztoc

__all__ = ["DEFAULT_SPAN_SIZE", "FileMetadata", "SociIndex", "Ztoc", "build_ztoc_bytes", "build_ztoc_file", "open_soci"]
