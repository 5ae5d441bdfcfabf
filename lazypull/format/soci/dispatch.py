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
from lazypull.format.chunklist import MAX_INDEX_BYTES as MAX_CHUNK_LIST_BYTES
from lazypull.format.chunklist import parse_index
from lazypull.format.index import LayerIndex
from lazypull.format.limits import DEFAULT_LIMITS, Limits
from lazypull.format.rawblob import RawBlobIndex
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


def chunks_of(layer: Descriptor) -> tuple[Descriptor, str] | None:
    """(the chunk index blob, the file's path) a resolver attached to a raw *layer*, or None."""
    text = layer.annotations.get(mt.ANNOTATION_LAZYPULL_CHUNKS)
    if not text:
        return None
    try:
        obj = json.loads(text)
        return Descriptor.from_json(obj), str(obj["path"])
    except (ValueError, KeyError, TypeError, LazypullError) as e:
        raise FormatError(f"layer {layer.digest}: invalid chunk index descriptor: {e}") from None


def with_chunks(layer: Descriptor, index: Descriptor, path: str) -> Descriptor:
    """Raw *layer* with its chunk index blob and file path attached (what a mount's spec carries)."""
    ann = dict(layer.annotations)
    ann[mt.ANNOTATION_LAZYPULL_CHUNKS] = json.dumps(
        {"mediaType": index.media_type, "digest": index.digest, "size": index.size, "path": path}
    )
    return Descriptor(layer.media_type, layer.digest, layer.size, ann, layer.platform, layer.urls, layer.extra)


def is_lazy(layer: Descriptor) -> bool:
    """Whether a layer can be mounted lazily: eStargz/zstd:chunked, gzip with a zTOC, or a
    raw blob with a chunk index."""
    return any(
        k in layer.annotations
        for k in (mt.ANNOTATION_TOC_DIGEST, mt.ANNOTATION_LAZYPULL_ZTOC, mt.ANNOTATION_LAZYPULL_CHUNKS)
    )


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
    chunks = None if toc_digest else chunks_of(layer)
    if chunks is not None:
        index, path = chunks
        blobs = parse_index(_side_blob(index, MAX_CHUNK_LIST_BYTES, open_blob, cache, f"chunk index of {layer.digest}"))
        blob = blobs.get(layer.digest)
        if blob is None:
            raise FormatError(f"chunk index {index.digest} does not list layer {layer.digest}")
        return RawBlobIndex(path, layer, blob)
    ztoc = None if toc_digest else ztoc_of(layer)
    if ztoc is None:
        return open_layer(source, toc_digest=toc_digest, limits=limits)
    data = _side_blob(ztoc, MAX_ZTOC_BYTES, open_blob, cache, f"zTOC of layer {layer.digest}")
    if limits.admit is not None:  # before its files are decoded
        limits.admit(len(data), Ztoc.count_files(data))
    return open_soci(data, source.size)


def _side_blob(
    desc: Descriptor, limit: int, open_blob: Callable[[Descriptor], ReadAt], cache: BlobCache | None, what: str
) -> bytes:
    """A blob that indexes a layer (a zTOC, a chunk index), from *cache* or *open_blob*,
    checked against its digest either way."""
    if desc.size > limit:
        raise FormatError(f"{what}: {desc.digest} is {desc.size} bytes, over the {limit} byte limit")
    data = cache.get(desc.digest) if cache is not None else None
    if data is None or len(data) != desc.size:
        data = open_blob(desc).read_at(0, desc.size)
        digestlib.verify(data, desc.digest, what=what)
        if cache is not None:
            cache.put(desc.digest, data)  # a re-opened mount needs no registry for it
    else:
        digestlib.verify(data, desc.digest, what=f"cached {what}")
    return data
