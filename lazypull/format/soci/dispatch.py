"""Which reader opens a layer: the one format decision the lazy filesystem needs.

eStargz / zstd:chunked layers carry their TOC in the blob (found by its footer); a plain
gzip layer with a SOCI index carries nothing, so the resolver that found its zTOC
records the zTOC's descriptor on the layer descriptor it hands to the mount
(``ANNOTATION_LAZYPULL_ZTOC``). The zTOC is fetched and checked against that digest.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Protocol

from lazypull.errors import FormatError, LazypullError
from lazypull.format import open_layer
from lazypull.format.index import LayerIndex
from lazypull.format.limits import DEFAULT_LIMITS, Limits
from lazypull.format.soci.layer import open_soci
from lazypull.format.soci.ztoc import Ztoc
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor
from lazypull.source import ReadAt

MAX_ZTOC_BYTES = 512 << 20


def ztoc_of(layer: Descriptor) -> Descriptor | None:
    """The zTOC descriptor a resolver attached to *layer*, or None."""
    text = layer.annotations.get(mt.ANNOTATION_LAZYPULL_ZTOC)
    if not text:
        return None
    try:
        return Descriptor.from_json(json.loads(text))
    except (ValueError, LazypullError) as e:
        raise FormatError(f"layer {layer.digest}: invalid zTOC descriptor: {e}") from None


def with_ztoc(layer: Descriptor, ztoc: Descriptor) -> Descriptor:
    """*layer* with its zTOC descriptor attached (what a mount's spec carries)."""
    ann = dict(layer.annotations)
    ann[mt.ANNOTATION_LAZYPULL_ZTOC] = json.dumps(
        {"mediaType": ztoc.media_type, "digest": ztoc.digest, "size": ztoc.size}
    )
    return Descriptor(layer.media_type, layer.digest, layer.size, ann, layer.platform, layer.urls, layer.extra)


def is_lazy(layer: Descriptor) -> bool:
    """Whether a layer can be mounted lazily: eStargz/zstd:chunked, or gzip with a zTOC."""
    return mt.ANNOTATION_TOC_DIGEST in layer.annotations or mt.ANNOTATION_LAZYPULL_ZTOC in layer.annotations


class BlobCache(Protocol):
    def get(self, digest: str) -> bytes | None: ...
    def put(self, digest: str, data: bytes) -> None: ...


def open_layer_index(
    layer: Descriptor,
    source: ReadAt,
    open_blob: Callable[[Descriptor], ReadAt],
    cache: BlobCache | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> LayerIndex:
    """The verified index of *layer*, read from *source* (and the zTOC from *cache*, which
    is content-addressed and checks what it returns, or else from *open_blob*)."""
    toc_digest = layer.annotations.get(mt.ANNOTATION_TOC_DIGEST)
    ztoc = None if toc_digest else ztoc_of(layer)
    if ztoc is None:
        return open_layer(source, toc_digest=toc_digest, limits=limits)
    if ztoc.size > MAX_ZTOC_BYTES:
        raise FormatError(f"zTOC {ztoc.digest} is {ztoc.size} bytes, over the {MAX_ZTOC_BYTES} byte limit")
    data = cache.get(ztoc.digest) if cache is not None else None
    if data is None or len(data) != ztoc.size:
        data = open_blob(ztoc).read_at(0, ztoc.size)
        digestlib.verify(data, ztoc.digest, what=f"zTOC of layer {layer.digest}")
        if cache is not None:
            cache.put(ztoc.digest, data)  # a re-opened mount needs no registry for it
    else:
        digestlib.verify(data, ztoc.digest, what=f"cached zTOC of layer {layer.digest}")
    if limits.admit is not None:  # before its files are decoded
        limits.admit(len(data), Ztoc.count_files(data))
    return open_soci(data, source.size)
