"""What a mount process needs to open one layer, as JSON (the spec file is mode 0600:
it may carry registry credentials)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lazypull.cache.chunks import ChunkCache
from lazypull.format import FileSource, open_layer
from lazypull.format.counting import CountingSource
from lazypull.format.index import LayerIndex
from lazypull.format.source import ReadAt
from lazypull.fs.fetcher import MIN_FETCH, Fetcher
from lazypull.fs.layer import LayerFS
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor
from lazypull.registry.credentials import Credential
from lazypull.registry.options import RegistryOptions


@dataclass
class LayerSpec:
    layer: dict[str, Any]  # the layer descriptor as JSON (digest, size, annotations)
    cache_dir: str
    ref: str = ""  # image reference the layer is pulled from (registry)
    blob_path: str = ""  # or a local blob file (layouts, tests)
    registry: dict[str, Any] = field(default_factory=dict)  # RegistryOptions.to_json()
    prefetch: bool = True
    background_fetch: bool = True
    fetch_timeout_sec: float = 60.0
    max_retries: int = 4
    cache_max_bytes: int = 10 << 30
    threads: int = 4
    record_access: bool = False  # write the files read, in order, to accessed.jsonl (for optimize)
    passthrough: bool = False  # FUSE passthrough for fully cached files (see FuseServer)
    min_fetch: int = MIN_FETCH  # a miss fetches at least this much of the blob (see Fetcher)

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor.from_json(self.layer)

    def save(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)

    @classmethod
    def load(cls, path: Path) -> LayerSpec:
        return cls(**json.loads(Path(path).read_text()))


def open_source(spec: LayerSpec, credential: Credential | None = None) -> ReadAt:
    if spec.blob_path:
        return FileSource(spec.blob_path)
    from lazypull.registry.blobsource import RegistryBlobSource
    from lazypull.registry.client import RegistryClient
    from lazypull.registry.reference import Reference
    from lazypull.registry.transport import Transport

    opts = RegistryOptions.from_json(spec.registry) if spec.registry else RegistryOptions()
    opts.credential = credential
    client = RegistryClient(
        opts, transport=Transport(max_retries=spec.max_retries, total_timeout=spec.fetch_timeout_sec)
    )
    return RegistryBlobSource(client, Reference.parse(spec.ref), spec.descriptor)


def open_layer_fs(
    spec: LayerSpec, credential: Credential | None = None
) -> tuple[LayerFS, Fetcher, CountingSource, LayerIndex]:
    """Fetch footer and TOC (verified against the manifest's TOC digest), build the tree."""
    desc = spec.descriptor
    source = CountingSource(open_source(spec, credential))
    index = open_layer(source, toc_digest=desc.annotations.get(mt.ANNOTATION_TOC_DIGEST))
    cache = ChunkCache(Path(spec.cache_dir), max_bytes=spec.cache_max_bytes)
    fetcher = Fetcher(
        index, source, cache, name=desc.digest[7:19], timeout=spec.fetch_timeout_sec, min_fetch=spec.min_fetch
    )
    return LayerFS(index, fetcher), fetcher, source, index
