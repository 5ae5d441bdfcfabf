"""Models in registries, read lazily: tensors of safetensors files in ModelPack or ORAS
artifacts (or images), fetching the header and the tensors asked for, nothing else.

    from lazypull.models import load_tensors
    with load_tensors("localhost:5000/models/tiny:v1", "model.safetensors", plain_http=True) as t:
        w = t["lm_head.weight"]          # numpy array; only its bytes were fetched
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from lazypull.models.safetensors import LazyTensors, TensorInfo

if TYPE_CHECKING:
    from lazypull.imagefs import ImageFS


def load_tensors(ref: str | ImageFS, path: str, names: Iterable[str] | None = None, **open_kw: Any) -> LazyTensors:
    """A lazy mapping name -> numpy array of the safetensors file *path* in *ref*.

    *ref* is a reference (opened with :func:`lazypull.open_image` and *open_kw*, closed with
    the mapping) or an open image. With *names*, those tensors only, fetched at once
    (adjacent ones in one range); without, every tensor, each fetched when first used.
    """
    from lazypull.imagefs import open_image

    if isinstance(ref, str):
        img = open_image(ref, **open_kw)
        try:
            return LazyTensors(img, path, names, owns=True)
        except BaseException:
            img.close()
            raise
    return LazyTensors(ref, path, names)


__all__ = ["LazyTensors", "TensorInfo", "load_tensors"]
