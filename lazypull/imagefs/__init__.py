"""Files out of container images from Python, without pulling them.

    import lazypull
    with lazypull.open_image("localhost:5000/app:v1", plain_http=True) as img:
        print(img.read_text("etc/os-release"))

See :mod:`lazypull.imagefs.image` for the API and :mod:`lazypull.fsspec_fs` for the
``lazypull://`` fsspec filesystem.
"""

from lazypull.imagefs.image import FetchStats, FileInfo, ImageFile, ImageFS, default_cache_dir, open_image
from lazypull.imagefs.layers import IndexFinder, StreamedLayerWarning, register_index_finder

__all__ = [
    "FetchStats",
    "FileInfo",
    "ImageFS",
    "ImageFile",
    "IndexFinder",
    "StreamedLayerWarning",
    "default_cache_dir",
    "open_image",
    "register_index_finder",
]
