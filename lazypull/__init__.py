"""lazypull: start containers before their image is downloaded.

Layers are mounted straight from the registry (eStargz, zstd:chunked) and only the
bytes a workload touches are fetched, verified and cached.
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lazypull.imagefs import FileInfo, ImageFS, open_image

__all__ = ["FileInfo", "ImageFS", "__version__", "open_image"]


def __getattr__(name: str) -> object:
    # ``lazypull.open_image`` without importing the image API (and its dependencies) for
    # every ``import lazypull`` (the daemon and the mount processes do not need it).
    if name in ("open_image", "ImageFS", "FileInfo"):
        from lazypull import imagefs

        return getattr(imagefs, name)
    raise AttributeError(f"module 'lazypull' has no attribute {name!r}")
