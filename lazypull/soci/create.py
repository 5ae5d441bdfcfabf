"""``soci create / list / rm``: SOCI indexes beside an unmodified image in its registry.

The image's manifest and layers are never rewritten, so its digest (and any signature
over it) stays valid: the index refers to the image, not the other way round.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lazypull.errors import LazypullError
from lazypull.format.soci.build import DEFAULT_SPAN_SIZE, build_ztoc_file
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.store import VerifyingReader
from lazypull.oci.types import Descriptor, Index, Manifest, Platform, host_platform, is_index
from lazypull.registry.referrers import list_referrers, push_referrer, remove_referrer
from lazypull.registry.repository import RegistryStore
from lazypull.soci.index import EMPTY_CONFIG, SociIndex, config_descriptor

log = logging.getLogger(__name__)

DEFAULT_MIN_LAYER_SIZE = 10 << 20  # soci-snapshotter's default: smaller layers are fetched whole


@dataclass
class LayerResult:
    digest: str
    size: int
    ztoc: Descriptor | None = None
    skipped: str = ""  # why no zTOC was built
    seconds: float = 0.0
    spans: int = 0
    files: int = 0


@dataclass
class CreateResult:
    image: Descriptor  # the image manifest (subject), unchanged
    index: Descriptor | None = None
    pushed_via: str = ""  # "api" or "tag"
    layers: list[LayerResult] = field(default_factory=list)


def image_manifest(store: RegistryStore, platform: Platform | None = None) -> tuple[Descriptor, Manifest]:
    """The platform's image manifest and its descriptor (the subject of SOCI indexes)."""
    root = store.resolve()
    if is_index(root.media_type):
        d = Index.parse(store.fetch(root), root.media_type).select(platform or host_platform())
        d = Descriptor(d.media_type, d.digest, d.size)
    else:
        d = root
    return d, Manifest.parse(store.fetch(d), d.media_type)


def _download(store: RegistryStore, desc: Descriptor, path: Path) -> None:
    with VerifyingReader(store.open_blob(desc), desc, what=f"layer {desc.digest}") as src, open(path, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def build_ztocs(
    src: RegistryStore,
    dst: RegistryStore,
    manifest: Manifest,
    *,
    span_size: int = DEFAULT_SPAN_SIZE,
    min_layer_size: int = DEFAULT_MIN_LAYER_SIZE,
    progress: Callable[[LayerResult], None] | None = None,
) -> tuple[list[LayerResult], list[Descriptor]]:
    """A zTOC for every gzip layer of *manifest* (read from *src*) of at least
    *min_layer_size* bytes, pushed to *dst*; (per-layer results, zTOC descriptors in
    layer order). Raises when no layer gets one: an empty SOCI index helps nobody."""
    results: list[LayerResult] = []
    ztocs: list[Descriptor] = []
    with tempfile.TemporaryDirectory(prefix="lazypull-soci-") as tmp:
        for layer in manifest.layers:
            r = LayerResult(layer.digest, layer.size)
            if layer.media_type not in mt.GZIP_LAYER_TYPES:
                r.skipped = f"{layer.media_type} is not gzip (zTOCs index gzip layers only)"
            elif layer.size < min_layer_size:
                r.skipped = f"smaller than {min_layer_size} bytes: fetched whole"
            else:
                t0 = time.monotonic()
                path = Path(tmp) / "layer"
                _download(src, layer, path)
                ztoc = build_ztoc_file(path, span_size)
                path.unlink()
                data = ztoc.to_bytes()
                zdesc = Descriptor(
                    mt.SOCI_ZTOC,
                    digestlib.of_bytes(data),
                    len(data),
                    annotations={
                        mt.ANNOTATION_SOCI_LAYER_DIGEST: layer.digest,
                        mt.ANNOTATION_SOCI_LAYER_MEDIA_TYPE: layer.media_type,
                    },
                )
                if not dst.has_blob(zdesc):
                    dst.push_bytes(zdesc, data)
                ztocs.append(zdesc)
                r.ztoc, r.seconds, r.spans, r.files = (
                    zdesc,
                    time.monotonic() - t0,
                    ztoc.max_span_id + 1,
                    len(ztoc.files),
                )
            results.append(r)
            if progress:
                progress(r)
    if not ztocs:
        raise LazypullError(
            f"no layer of {src.name} needs a zTOC (none is gzip and at least {min_layer_size} bytes); "
            "lower --min-layer-size to index smaller layers"
        )
    return results, ztocs


def push_empty_config(store: RegistryStore, artifact_type: str) -> None:
    """The ``{}`` blob a SOCI index names as its config (registries check it exists)."""
    cfg = config_descriptor(artifact_type)
    if not store.has_blob(cfg):
        store.push_bytes(cfg, EMPTY_CONFIG)


def create_index(
    store: RegistryStore,
    *,
    span_size: int = DEFAULT_SPAN_SIZE,
    min_layer_size: int = DEFAULT_MIN_LAYER_SIZE,
    platform: Platform | None = None,
    progress: Callable[[LayerResult], None] | None = None,
) -> CreateResult:
    """Build a zTOC for every gzip layer of at least *min_layer_size* bytes, push them and
    the SOCI index, and list the index among the image's referrers."""
    subject, manifest = image_manifest(store, platform)
    result = CreateResult(subject)
    result.layers, ztocs = build_ztocs(
        store, store, manifest, span_size=span_size, min_layer_size=min_layer_size, progress=progress
    )
    push_empty_config(store, mt.SOCI_INDEX_ARTIFACT_TYPE)
    index = SociIndex(subject, ztocs)
    data = index.to_bytes()
    result.index = index.descriptor(data)
    result.pushed_via = push_referrer(store.client, store.ref, data, result.index, subject.digest)
    return result


def list_indexes(store: RegistryStore, platform: Platform | None = None) -> tuple[Descriptor, list[Descriptor]]:
    """(image manifest, the SOCI indexes that refer to it)."""
    subject, _ = image_manifest(store, platform)
    return subject, list_referrers(store.client, store.ref, subject.digest, mt.SOCI_INDEX_ARTIFACT_TYPE)


def remove_indexes(store: RegistryStore, digest: str | None = None, platform: Platform | None = None) -> list[str]:
    """Delete the image's SOCI index *digest* (every one when None); returns the digests removed."""
    subject, found = list_indexes(store, platform)
    targets = [d.digest for d in found if digest is None or d.digest == digest]
    if digest is not None and not targets:
        raise LazypullError(f"{digest} is not a SOCI index of {store.name}")
    for t in targets:
        remove_referrer(store.client, store.ref, subject.digest, t)
    return targets
