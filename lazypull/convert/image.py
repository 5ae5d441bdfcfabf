"""Convert images to eStargz: walk index -> manifests -> layers over any two ImageStores.

Layers are streamed from the source (verified while read), written to a temporary file
by the layer writer, and pushed; configs get new diff_ids and manifests the TOC-digest
and uncompressed-size annotations. Nothing holds a whole layer in memory.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from lazypull.convert.lowerlinks import find_lower_files, with_lower_files
from lazypull.errors import FormatError, LazypullError, OCIError
from lazypull.format import BuildResult, build_estargz, open_layer
from lazypull.format.estargz_writer import HardlinkOutsideLayerError
from lazypull.format.tarstream import NameNotUTF8Error, Prioritized, Readable
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.artifacts import Kind, artifact_type, is_tar_layer, kind_of
from lazypull.oci.resolve import select_manifest
from lazypull.oci.store import ImageStore, VerifyingReader
from lazypull.oci.types import (
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    dump_json,
    host_platform,
    is_foreign_layer,
    is_index,
)

log = logging.getLogger(__name__)

# Called as (event, layer descriptor, bytes done, bytes total) so a CLI can draw progress.
ProgressFn = Callable[[str, Descriptor, int, int], None]


@dataclass
class ConvertOptions:
    chunk_size: int = 4 << 20
    compression_level: int = 9
    oci: bool = False
    force: bool = False
    prioritized: Prioritized | None = None
    platforms: Sequence[Platform] | None = None  # None: host platform; [] with all_platforms
    all_platforms: bool = False
    workers: int | None = None
    tmpdir: str | None = None
    layer_format: str = "estargz"  # or "zstdchunked"
    progress: ProgressFn | None = field(default=None, repr=False)


_LAYER_FORMAT_ANNOTATIONS = frozenset(
    {
        mt.ANNOTATION_TOC_DIGEST,
        mt.ANNOTATION_UNCOMPRESSED_SIZE,
        mt.ANNOTATION_ZSTD_CHUNKED_MANIFEST_CHECKSUM,
        mt.ANNOTATION_ZSTD_CHUNKED_MANIFEST_POSITION,
    }
)


def is_estargz_layer(desc: Descriptor) -> bool:
    return mt.ANNOTATION_TOC_DIGEST in desc.annotations


class Converter:
    def __init__(self, src: ImageStore, dst: ImageStore, opts: ConvertOptions) -> None:
        self.src, self.dst, self.opts = src, dst, opts
        self._converted: dict[str, Descriptor] = {}  # source layer digest -> new descriptor
        self._diff_ids: dict[str, str] = {}
        self._pending_docs: dict[str, bytes] = {}  # manifests/indexes built but not yet pushed

    def run(self, tag: str | None = None) -> Descriptor:
        """Convert the source image; returns the descriptor of the pushed manifest or index."""
        root = self.src.resolve()
        if is_index(root.media_type):
            out = self._convert_index(root)
        else:
            out = self._convert_manifest(root, root.platform)
        self.dst.push_manifest(out, self._pending_docs[out.digest], tag=tag)
        return out

    # -- index / manifest -----------------------------------------------------------
    def _convert_index(self, desc: Descriptor) -> Descriptor:
        index = Index.parse(self.src.fetch(desc), desc.media_type)
        if self.opts.all_platforms:
            chosen = list(index.manifests)
        else:
            wanted = list(self.opts.platforms or [host_platform()])
            chosen = []
            for p in wanted:
                d = select_manifest(self.src, desc, p)  # follows nested indexes
                if d not in chosen:
                    chosen.append(d)
            if len(chosen) == 1:
                return self._convert_manifest(chosen[0], chosen[0].platform)
        new_descs = []
        for d in chosen:
            if is_index(d.media_type):  # a nested index: converted as a whole, kept nested
                nd = self._convert_index_all(d)
                self.dst.push_manifest(nd, self._pending_docs.pop(nd.digest))
                new_descs.append(nd)
                continue
            if d.media_type not in mt.MANIFEST_TYPES:
                log.info("keeping non-image manifest %s (%s) as is", d.digest, d.media_type)
                self._copy_blob(d)
                new_descs.append(d)
                continue
            nd = self._convert_manifest(d, d.platform)
            self.dst.push_manifest(nd, self._pending_docs.pop(nd.digest))
            new_descs.append(nd)
        new_index = Index(
            manifests=new_descs,
            media_type=mt.OCI_INDEX if self.opts.oci else index.media_type,
            annotations=index.annotations,
            extra=index.extra,
        )
        return self._doc(new_index.media_type, new_index.to_bytes(), None, desc.annotations)

    def _convert_index_all(self, desc: Descriptor) -> Descriptor:
        saved = self.opts.all_platforms
        self.opts.all_platforms = True
        try:
            return self._convert_index(desc)
        finally:
            self.opts.all_platforms = saved

    def _convert_manifest(self, desc: Descriptor, platform: Platform | None) -> Descriptor:
        manifest = Manifest.parse(self.src.fetch(desc), desc.media_type)
        kind = kind_of(manifest)
        if kind == Kind.MODELPACK:
            return self._convert_model(desc, manifest, platform)
        if kind != Kind.IMAGE:
            raise OCIError(f"{desc.digest}: convert takes images and ModelPack models, not {artifact_type(manifest)!r}")
        config = ImageConfig.parse(self.src.fetch(manifest.config))
        if len(config.diff_ids) != len(manifest.layers):
            raise OCIError(
                f"manifest {desc.digest}: {len(manifest.layers)} layers but "
                f"{len(config.diff_ids)} diff_ids in the config"
            )
        jobs = list(enumerate(manifest.layers))
        workers = 1 if len(jobs) < 2 else 2  # each layer already compresses on all cores
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convert-layer") as pool:
            results = list(
                pool.map(lambda j: self._convert_layer(j[1], config.diff_ids[j[0]], manifest.layers[: j[0]]), jobs)
            )
        new_layers = [r[0] for r in results]
        config.diff_ids = [r[1] for r in results]
        cfg_bytes = config.to_bytes()
        cfg_type = (
            mt.TO_OCI.get(manifest.config.media_type, manifest.config.media_type)
            if self.opts.oci
            else (manifest.config.media_type)
        )
        cfg_desc = self._push_doc(cfg_type, cfg_bytes)
        new_manifest = Manifest(
            config=cfg_desc,
            layers=new_layers,
            media_type=mt.OCI_MANIFEST if self.opts.oci else manifest.media_type,
            annotations=manifest.annotations,
            extra=manifest.extra,
        )
        return self._doc(new_manifest.media_type, new_manifest.to_bytes(), platform, desc.annotations)

    def _convert_model(self, desc: Descriptor, manifest: Manifest, platform: Platform | None) -> Descriptor:
        """A ModelPack artifact: its tar layers rebuilt lazy under their own ModelPack media type
        (the compression suffix the output's: eStargz is gzip, zstd:chunked zstd), raw layers
        and everything else kept; the config's ``modelfs.diffIds`` follow the new layers."""
        config = json.loads(self.src.fetch(manifest.config))
        new_layers: list[Descriptor] = []
        diff_ids: dict[str, str] = {}
        for layer in manifest.layers:
            if is_tar_layer(layer, Kind.MODELPACK) and layer.media_type.startswith(mt.MODELPACK_LAYER_PREFIX):
                base = layer.media_type.rpartition(".tar")[0] + ".tar"
                out_type = base + ("+zstd" if self.opts.layer_format == "zstdchunked" else "+gzip")
                nd, new_diff_id = self._build(layer, partial(self._verified_blob, layer), out_type)
                diff_ids[layer.digest] = new_diff_id
                new_layers.append(nd)
            else:
                self._copy_blob(layer)
                new_layers.append(layer)
        modelfs = config.get("modelfs") if isinstance(config, dict) else None
        if isinstance(modelfs, dict) and isinstance(modelfs.get("diffIds"), list):
            old = modelfs["diffIds"]
            if len(old) == len(manifest.layers):  # one per layer, in order: the spec's shape
                modelfs["diffIds"] = [diff_ids.get(d.digest, o) for d, o in zip(manifest.layers, old, strict=True)]
        cfg_desc = self._push_doc(manifest.config.media_type, dump_json(config))
        new_manifest = Manifest(
            config=cfg_desc,
            layers=new_layers,
            media_type=mt.OCI_MANIFEST,
            annotations=manifest.annotations,
            extra=manifest.extra,
        )
        return self._doc(new_manifest.media_type, new_manifest.to_bytes(), platform, desc.annotations)

    def _verified_blob(self, desc: Descriptor) -> VerifyingReader:
        return VerifyingReader(self.src.open_blob(desc), desc)

    # -- layers -----------------------------------------------------------------------
    def _convert_layer(
        self, desc: Descriptor, diff_id: str, lowers: Sequence[Descriptor] = ()
    ) -> tuple[Descriptor, str]:
        if desc.digest in self._converted:
            return self._converted[desc.digest], self._diff_ids[desc.digest]
        if is_foreign_layer(desc.media_type):
            where = f" (its content is at {', '.join(desc.urls)})" if desc.urls else ""
            log.warning("layer %s is non-distributable%s: kept as is, not fetched or converted", desc.digest, where)
            nd = self._retype(desc, desc.annotations)
            self._converted[desc.digest], self._diff_ids[desc.digest] = nd, diff_id
            return nd, diff_id
        if desc.media_type not in mt.LAYER_TYPES:
            raise OCIError(f"layer {desc.digest} has unsupported media type {desc.media_type!r}")
        if is_estargz_layer(desc) and not self.opts.force and self._valid_estargz(desc):
            log.info("layer %s is already eStargz; keeping it (use --force to rebuild)", desc.digest)
            self._copy_blob(desc)
            nd = self._retype(desc, desc.annotations)
            self._converted[desc.digest], self._diff_ids[desc.digest] = nd, diff_id
            return nd, diff_id
        try:
            nd, new_diff_id = self._build(desc, lambda: VerifyingReader(self.src.open_blob(desc), desc))
        except HardlinkOutsideLayerError as e:
            if not lowers:
                raise FormatError(f"layer {desc.digest}: {e}, but no layer lies below it") from None
            log.info("layer %s: %s; copying them up into the layer, as overlayfs would", desc.digest, e)
            with tempfile.TemporaryDirectory(prefix="lazypull-lower-", dir=self.opts.tmpdir) as tmpd:
                found = find_lower_files(self.src, lowers, e.targets, tmpd)
                spooled = Path(tmpd) / "layer.tar"
                with VerifyingReader(self.src.open_blob(desc), desc) as raw, open(spooled, "wb") as f:
                    with_lower_files(raw, found, f)
                nd, new_diff_id = self._build(desc, lambda: open(spooled, "rb"))  # noqa: SIM115
        except NameNotUTF8Error as e:
            log.warning("layer %s: %s; kept as a plain layer (pulled whole, not lazily)", desc.digest, e)
            self._copy_blob(desc)
            ann = {k: v for k, v in desc.annotations.items() if k not in _LAYER_FORMAT_ANNOTATIONS}
            nd, new_diff_id = self._retype(desc, ann), diff_id
        self._converted[desc.digest], self._diff_ids[desc.digest] = nd, new_diff_id
        return nd, new_diff_id

    def _build(
        self, desc: Descriptor, open_source: Callable[[], Any], media_type: str | None = None
    ) -> tuple[Descriptor, str]:
        """Build the lazy layer from the source stream *open_source* gives; push it (typed
        *media_type*, else an image layer type)."""
        progress = self.opts.progress
        fd, tmp = tempfile.mkstemp(prefix="lazypull-layer-", dir=self.opts.tmpdir)
        try:
            with os.fdopen(fd, "w+b") as out, open_source() as raw:
                reader = _ProgressReader(raw, desc, progress) if progress else raw
                res = self._builder()(
                    reader,
                    out,
                    chunk_size=self.opts.chunk_size,
                    compression_level=self.opts.compression_level,
                    prioritized_files=self.opts.prioritized,
                    workers=self.opts.workers,
                )
            ann = {
                k: v
                for k, v in desc.annotations.items()
                if k not in (mt.ANNOTATION_TOC_DIGEST, mt.ANNOTATION_UNCOMPRESSED_SIZE)
            }
            ann[mt.ANNOTATION_TOC_DIGEST] = res.toc_digest
            ann[mt.ANNOTATION_UNCOMPRESSED_SIZE] = str(res.uncompressed_size)
            layer_type = (
                mt.OCI_LAYER_GZIP
                if (self.opts.oci or desc.media_type.startswith("application/vnd.oci"))
                else mt.DOCKER_LAYER_GZIP
            )
            nd = Descriptor(media_type or layer_type, res.blob_digest, res.blob_size, ann)
            if progress:
                progress("push", nd, 0, nd.size)
            if not self.dst.has_blob(nd):
                with open(tmp, "rb") as f:
                    self.dst.push_blob(nd, _SentReader(f, nd, progress) if progress else f)  # type: ignore[arg-type]
            if progress:
                progress("push", nd, nd.size, nd.size)  # all sent (or already there)
                progress("done", desc, desc.size, desc.size)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return nd, res.diff_id

    def _builder(self) -> Callable[..., BuildResult]:
        if self.opts.layer_format == "zstdchunked":
            try:
                from lazypull.format.zstdchunked import build_zstdchunked
            except ImportError:
                raise LazypullError("zstd:chunked output is not available in this build") from None
            return build_zstdchunked
        return build_estargz

    def _valid_estargz(self, desc: Descriptor) -> bool:
        try:
            idx = open_layer(self.src.blob_source(desc), toc_digest=desc.annotations[mt.ANNOTATION_TOC_DIGEST])
            return idx.format == self.opts.layer_format
        except (FormatError, LazypullError) as e:
            log.warning("layer %s has a TOC annotation but is not valid eStargz (%s); converting it", desc.digest, e)
            return False

    def _retype(self, desc: Descriptor, ann: dict[str, str]) -> Descriptor:
        mtype = mt.TO_OCI.get(desc.media_type, desc.media_type) if self.opts.oci else desc.media_type
        return Descriptor(mtype, desc.digest, desc.size, dict(ann), None, desc.urls)

    def _copy_blob(self, desc: Descriptor) -> None:
        if not self.dst.has_blob(desc):
            with VerifyingReader(self.src.open_blob(desc), desc) as r:
                self.dst.push_blob(desc, r)  # type: ignore[arg-type]

    # -- documents --------------------------------------------------------------------
    def _push_doc(self, media_type: str, data: bytes) -> Descriptor:
        d = Descriptor(media_type, digestlib.of_bytes(data), len(data))
        self.dst.push_bytes(d, data)
        return d

    def _doc(self, media_type: str, data: bytes, platform: Platform | None, ann: dict[str, str]) -> Descriptor:
        """A manifest/index to push later (by run() or the index writer), remembered by digest."""
        d = Descriptor(media_type, digestlib.of_bytes(data), len(data), dict(ann), platform)
        self._pending_docs[d.digest] = data
        return d


class _ProgressReader:
    def __init__(self, raw: Readable, desc: Descriptor, fn: ProgressFn) -> None:
        self._raw, self._desc, self._fn, self._n = raw, desc, fn, 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._n += len(data)
        self._fn("convert", self._desc, self._n, self._desc.size)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:
        n = self._raw.readinto(b)  # type: ignore[attr-defined]
        self._n += n
        self._fn("convert", self._desc, self._n, self._desc.size)
        return int(n)

    def readable(self) -> bool:
        return True


class _SentReader:
    """A blob being uploaded: bytes read before this read were handed to the registry and
    sent (uploads read a part, send it, read the next), so they count as sent."""

    def __init__(self, raw: BinaryIO, desc: Descriptor, fn: ProgressFn) -> None:
        self._raw, self._desc, self._fn, self._n = raw, desc, fn, 0

    def read(self, n: int = -1) -> bytes:
        if self._n:
            self._fn("push", self._desc, self._n, self._desc.size)
        data = self._raw.read(n)
        self._n += len(data)
        return data


def convert_image(src: ImageStore, dst: ImageStore, opts: ConvertOptions, tag: str | None = None) -> Descriptor:
    return Converter(src, dst, opts).run(tag)
