"""Fetch the files a pod's prefetch hint names into the node's chunk cache, before it starts.

The hint names paths of the container's root filesystem, so they are resolved across the
image's layers the way overlayfs will show them: an upper layer's entry wins, and its
whiteouts (``.wh.NAME``) and opaque directories (``.wh..wh..opq``) hide what lies below.
The chosen files' chunks are fetched (adjacent ones in one Range request), verified by
the layer index, and written to the content-addressed cache every lazy mount reads from,
so this works whatever serves the mounts and however they are started.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram

from lazypull.cache.chunks import ChunkCache
from lazypull.errors import LazypullError
from lazypull.format import open_layer
from lazypull.format.index import Chunk, Entry, EntryType, LayerIndex
from lazypull.oci import mediatypes as mt
from lazypull.registry.blobsource import RegistryBlobSource
from lazypull.registry.reference import Reference
from lazypull.service.cri.hints import Pattern
from lazypull.snapshot.remote import LayerResolver
from lazypull.source import ReadAt

log = logging.getLogger(__name__)

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_SPAN = 16 << 20  # one Range request never covers more than this

PODS = Counter(
    "lazypull_prefetch_hint_pods", "Pods whose prefetch hint was handled, by result", ["result"]
)  # result: ok, malformed, failed
FILES = Counter("lazypull_prefetch_hint_files", "Files named by pods' prefetch hints and made local")
FETCHED = Counter("lazypull_prefetch_hint_fetched_bytes", "Compressed bytes fetched for pods' prefetch hints")
CACHED = Counter("lazypull_prefetch_hint_cached_bytes", "Hinted chunk bytes found in the cache already")
DURATION = Histogram("lazypull_prefetch_hint_duration_seconds", "Time to prefetch one pod's hinted files")


@dataclass
class PrefetchResult:
    files: int = 0  # regular files the hint selected
    chunks: int = 0  # chunks written to the cache now
    bytes_fetched: int = 0  # compressed bytes from the registry (TOCs excluded)
    bytes_cached: int = 0  # chunk bytes already cached
    layers: int = 0  # layers holding selected files
    complete: bool = True  # False when the deadline cut it short
    written: list[str] = field(default_factory=list)  # digests of the chunks written now


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def select_files(layers: list[LayerIndex], patterns: list[Pattern]) -> list[tuple[int, Entry]]:
    """(layer position, regular-file entry) for every file of the merged view a pattern matches.

    *layers* are bottom first, as in the manifest."""
    taken: set[str] = set()  # paths an upper layer decided
    removed: set[str] = set()  # whiteouts of upper layers
    opaque: set[str] = set()  # opaque directories of upper layers (their lower contents are hidden)
    non_dirs: set[str] = set()  # an upper non-directory hides a lower subtree
    out: list[tuple[int, Entry]] = []
    for pos in range(len(layers) - 1, -1, -1):
        index = layers[pos]
        new_removed: list[str] = []
        new_opaque: list[str] = []
        for e in index.entries():
            name = e.name
            parent, _, base = name.rpartition("/")
            if base == OPAQUE:
                new_opaque.append(parent)
                continue
            if base.startswith(WHITEOUT):
                new_removed.append(f"{parent}/{base[len(WHITEOUT) :]}" if parent else base[len(WHITEOUT) :])
                continue
            if not name or name in taken or name in removed:
                continue
            if any(a in removed or a in opaque or a in non_dirs for a in _ancestors(name)):
                continue
            taken.add(name)
            if e.type != EntryType.DIR:
                non_dirs.add(name)
            if e.type not in (EntryType.REG, EntryType.HARDLINK) or not any(p.matches(name) for p in patterns):
                continue
            target = index.lookup(e.link_name) if e.type == EntryType.HARDLINK else e
            if target is not None and target.type == EntryType.REG and target.chunks:
                out.append((pos, target))
        removed.update(new_removed)
        opaque.update(new_opaque)
    return out


def fetch_chunks(
    index: LayerIndex, source: ReadAt, cache: ChunkCache, entries: list[Entry], deadline: float
) -> PrefetchResult:
    """Fetch, verify and cache the chunks of *entries* that are not cached yet."""
    res = PrefetchResult()
    wanted: dict[str, Chunk] = {}
    for e in entries:
        for c in e.chunks:
            if c.digest in wanted:
                continue
            if cache.contains(c.digest):
                res.bytes_cached += c.size
            else:
                wanted[c.digest] = c
    chunks = sorted(wanted.values(), key=lambda c: (c.blob_offset, c.inner_offset))
    i = 0
    while i < len(chunks):
        if time.monotonic() > deadline:
            res.complete = False
            break
        start, end, j = chunks[i].blob_offset, chunks[i].blob_end, i + 1
        while j < len(chunks) and chunks[j].blob_offset <= end and max(end, chunks[j].blob_end) - start <= MAX_SPAN:
            end = max(end, chunks[j].blob_end)
            j += 1
        raw = source.read_at(start, end - start)
        res.bytes_fetched += len(raw)
        for c in chunks[i:j]:
            data = index.decode_chunk(c, raw[c.blob_offset - start : c.blob_end - start])  # verifies
            if cache.put_parts(c.digest, [data]) is not None:
                res.chunks += 1
                res.written.append(c.digest)
        i = j
    return res


class HintPrefetcher:
    """Resolves a pod's hint against an image and makes the named files local."""

    def __init__(
        self,
        resolver: LayerResolver,
        cache: ChunkCache,
        timeout_sec: float = 30.0,
        workers: int = 4,
        on_written: Callable[[list[str]], None] | None = None,
    ) -> None:
        """*on_written*: told the digests written, so the owner of the cache's bound (the
        layer server) accounts for them; *cache* then does no accounting of its own."""
        self.resolver = resolver
        self.cache = cache
        self.timeout_sec = timeout_sec
        self.workers = workers
        self.on_written = on_written

    def prefetch(self, image: str, patterns: list[Pattern]) -> PrefetchResult:
        """Raises LazypullError when the image or a layer cannot be read."""
        deadline = time.monotonic() + self.timeout_sec
        ref = Reference.parse(image)
        client = self.resolver.client_for(ref)
        layers = [d for d in self.resolver.manifest(ref).layers]
        if not all(mt.ANNOTATION_TOC_DIGEST in d.annotations for d in layers):
            raise LazypullError(f"{ref} has layers that are not eStargz; nothing is mounted lazily to prefetch for")
        sources = [RegistryBlobSource(client, ref, d) for d in layers]
        with ThreadPoolExecutor(self.workers, thread_name_prefix="hint") as pool:
            indexes = list(
                pool.map(lambda s: open_layer(s, toc_digest=s.desc.annotations[mt.ANNOTATION_TOC_DIGEST]), sources)
            )
            chosen = select_files(indexes, patterns)
            by_layer: dict[int, list[Entry]] = {}
            for pos, e in chosen:
                by_layer.setdefault(pos, []).append(e)
            parts = list(
                pool.map(
                    lambda item: fetch_chunks(indexes[item[0]], sources[item[0]], self.cache, item[1], deadline),
                    by_layer.items(),
                )
            )
        total = PrefetchResult(files=len(chosen), layers=len(by_layer))
        for p in parts:
            total.chunks += p.chunks
            total.bytes_fetched += p.bytes_fetched
            total.bytes_cached += p.bytes_cached
            total.complete = total.complete and p.complete
            total.written += p.written
        if total.written and self.on_written is not None:
            try:
                self.on_written(total.written)
            except LazypullError as e:  # the server accounts for them when it next scans
                log.warning("chunks prefetched for a hint not yet under the cache bound: %s", e)
        return total

    def run_for_pod(self, pod: str, image: str, patterns: list[Pattern]) -> PrefetchResult | None:
        """prefetch() with the pod's log line and metrics; never raises."""
        t0 = time.monotonic()
        try:
            res = self.prefetch(image, patterns)
        except Exception as e:  # a hint never fails a pull
            PODS.labels("failed").inc()
            log.warning("pod %s: prefetch hint for %s not applied: %s", pod, image, e)
            return None
        dt = time.monotonic() - t0
        PODS.labels("ok").inc()
        FILES.inc(res.files)
        FETCHED.inc(res.bytes_fetched)
        CACHED.inc(res.bytes_cached)
        DURATION.observe(dt)
        log.info(
            "pod %s: prefetched %d hinted files of %s from %d layers in %.2fs (%d bytes fetched, %d already cached%s)",
            pod,
            res.files,
            image,
            res.layers,
            dt,
            res.bytes_fetched,
            res.bytes_cached,
            "" if res.complete else "; stopped at the timeout",
        )
        return res
