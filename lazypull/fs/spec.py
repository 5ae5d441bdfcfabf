"""What the layer server needs to open one layer: the ``Mount`` request's payload.

It may carry registry credentials (``registry["user"]``, or ``registry["credential"]``: the
kubelet's, from the CRI keychain); those live in the server's memory only:
:meth:`LayerSpec.public` is what may be written to disk."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lazypull.cache.chunks import ChunkCache
from lazypull.errors import LazypullError
from lazypull.format.compactindex import COMPACT_FORMATS, CompactIndex
from lazypull.format.compactwrite import compact_copy, write_file
from lazypull.format.counting import CountingSource
from lazypull.format.index import LayerIndex
from lazypull.format.limits import DEFAULT_LIMITS
from lazypull.format.soci.dispatch import open_layer_index, ztoc_of
from lazypull.fs.buildapart import BuildApart, build_in_child
from lazypull.fs.fetcher import MIN_FETCH, Fetcher
from lazypull.fs.indexmemory import Claim
from lazypull.fs.layer import PARSED_SERVES_UP_TO, LayerFS
from lazypull.fs.opened import RecordingSource, ReplaySource, TailSource
from lazypull.giveway import Pacer
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor
from lazypull.registry.options import SECRET_KEYS, RegistryOptions, credential_from_json
from lazypull.source import ReadAt

if TYPE_CHECKING:
    from lazypull.registry.client import RegistryClient

log = logging.getLogger(__name__)


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
    record_access: bool = False  # remember the files read, in order (Stats/Unmount return them; optimize)
    passthrough: bool = False  # FUSE passthrough for fully cached files (see FuseServer)
    min_fetch: int = MIN_FETCH  # a miss fetches at least this much of the blob (see Fetcher)
    # The image's prefetch profile for this layer: [path, [[offset, length], ...]] in first-access
    # order, fetched ahead of the background fetch up to profile_budget bytes of content.
    profile: list[list[Any]] = field(default_factory=list)
    profile_budget: int = 0

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor.from_json(self.layer)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def public(self) -> dict[str, Any]:
        """The spec without credentials (what the server saves to re-attach after a restart)."""
        d = asdict(self)
        d["registry"] = {k: v for k, v in self.registry.items() if k not in SECRET_KEYS}
        d["profile"] = []  # a first start's plan: not kept, nor applied again after a restart
        return d

    def profile_plan(self) -> list[tuple[str, list[tuple[int, int]]]]:
        """The profile's entries, type-checked (anything else is dropped: a hint, never trusted)."""
        plan: list[tuple[str, list[tuple[int, int]]]] = []
        for item in self.profile:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                continue
            if not isinstance(item[1], list):
                continue
            ranges = [
                (int(r[0]), int(r[1]))
                for r in item[1]
                if isinstance(r, list) and len(r) == 2 and all(type(x) is int and x >= 0 for x in r)
            ]
            plan.append((item[0], ranges))
        return plan

    @property
    def has_secrets(self) -> bool:
        return any(self.registry.get(k) for k in SECRET_KEYS)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LayerSpec:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


class RegistryClients:
    """One registry client (connection pool, tokens) per distinct set of options, shared by the
    layers of a process: a layer mount then costs its footer and TOC requests, not a new
    connection and token handshake."""

    def __init__(self) -> None:
        self._clients: dict[str, RegistryClient] = {}
        self._lock = threading.Lock()

    def get(self, spec: LayerSpec) -> RegistryClient:
        from lazypull.registry.client import RegistryClient
        from lazypull.registry.transport import Transport

        key = self._key(spec)
        with self._lock:
            c = self._clients.get(key)
            if c is None:
                opts = RegistryOptions.from_json(spec.registry) if spec.registry else RegistryOptions()
                c = self._clients[key] = RegistryClient(
                    opts, transport=Transport(max_retries=spec.max_retries, total_timeout=spec.fetch_timeout_sec)
                )
            return c

    @staticmethod
    def _key(spec: LayerSpec) -> str:
        return json.dumps([spec.registry, spec.max_retries, spec.fetch_timeout_sec], sort_keys=True)

    def renew(self, old: LayerSpec, new: LayerSpec) -> bool:
        """*old*'s credential was rotated to *new*'s: the client the open layers of *old* hold
        takes it in place (their next requests use it) and is found under *new* from now on.
        False if there is no such client or nothing changed."""
        old_key, new_key = self._key(old), self._key(new)
        cred = credential_from_json(new.registry.get("credential"))
        if old_key == new_key or cred is None:
            return False
        with self._lock:
            c = self._clients.pop(old_key, None)
            if c is None:
                return False
            self._clients.setdefault(new_key, c)
        c.renew_credential(cred)
        return True


def open_source(spec: LayerSpec, clients: RegistryClients | None = None, desc: Descriptor | None = None) -> ReadAt:
    """The layer blob (or another blob of the same repository/layout, e.g. its zTOC)."""
    if spec.blob_path:
        from lazypull.oci.layout import blob_file

        path = Path(spec.blob_path).with_name(desc.digest[7:]) if desc else Path(spec.blob_path)
        return blob_file(path, desc or spec.descriptor, str(path.parent.parent.parent))
    from lazypull.registry.blobsource import RegistryBlobSource
    from lazypull.registry.reference import Reference

    client = (clients or RegistryClients()).get(spec)
    return RegistryBlobSource(client, Reference.parse(spec.ref), desc or spec.descriptor)


def index_path(saved: Path) -> Path:
    """Where the compact index of a layer whose open is saved at *saved* lives."""
    return saved.with_name(saved.name + ".index.v1")


def index_key(desc: Descriptor) -> bytes:
    """What a compact index file must have been made from to be re-used: the layer blob and
    the TOC (or zTOC) its descriptor names."""
    ann = desc.annotations
    return json.dumps(
        [desc.digest, desc.size, ann.get(mt.ANNOTATION_TOC_DIGEST, ""), ann.get(mt.ANNOTATION_LAZYPULL_ZTOC, "")]
    ).encode()


def _compact(index: LayerIndex, path: Path | None, key: bytes, pace: Pacer | None = None) -> LayerIndex:
    """*index* as a compact index (mapped from *path* when given); SOCI indexes stay as they are.
    With *pace*, the build gives way to requests being served (it runs beside them)."""
    if index.format not in COMPACT_FORMATS:
        return index
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            return write_file(index, path, key, pace)
        except OSError as e:
            log.warning("cannot write the index file %s (%s); keeping it in memory", path, e)
    return compact_copy(index)


def _build_apart(spec: LayerSpec, saved: Path, key: bytes) -> CompactIndex:
    path = index_path(saved)
    t0 = time.monotonic()
    build_in_child(saved, spec.layer, path, key)
    index = CompactIndex.open(path, key)
    log.info(
        "layer %s: index of %d entries built by a process of its own in %.1fs",
        spec.descriptor.digest[7:19], len(index), time.monotonic() - t0,
    )
    return index


def open_layer_fs(
    spec: LayerSpec,
    cache: ChunkCache,
    saved: Path | None = None,
    clients: RegistryClients | None = None,
    *,
    build_in_background: bool = False,
    claim: Claim | None = None,
) -> tuple[LayerFS, Fetcher, CountingSource, LayerIndex]:
    """Fetch footer and TOC (one request for the blob's tail; verified against the manifest's
    TOC digest), build the tree.

    With *saved*, the bytes the open reads are kept there, and taken from there next time
    (still verified), so re-opening a layer needs no registry; the compact index is written
    beside it (:func:`index_path`) and re-used when intact and made for the same layer.

    With *build_in_background*, a compact index that has to be built is built in a thread
    once the TOC is fetched, verified and validated: the returned filesystem serves as soon
    as it is ready (its requests wait until then), so a mount does not wait for it.

    With *claim*, parsing a TOC first waits for its share of the layer server's index memory
    (:mod:`lazypull.fs.indexmemory`), given back once the compact index serves."""
    try:
        return _open_layer_fs(spec, cache, saved, clients, build_in_background, claim)
    except BaseException:
        if claim is not None:
            claim.release()
        raise


def _open_layer_fs(
    spec: LayerSpec,
    cache: ChunkCache,
    saved: Path | None,
    clients: RegistryClients | None,
    build_in_background: bool,
    claim: Claim | None,
) -> tuple[LayerFS, Fetcher, CountingSource, LayerIndex]:
    desc = spec.descriptor
    # A TOC too large to serve parsed is parsed and indexed by a child process (buildapart).
    apart = saved is not None and (bool(desc.annotations.get(mt.ANNOTATION_TOC_DIGEST)) or ztoc_of(desc) is None)

    def admit(toc_bytes: int, entries: int) -> None:
        if claim is not None:
            claim.admit(toc_bytes, entries)
        if apart and entries > PARSED_SERVES_UP_TO:
            raise BuildApart

    limits = dataclasses.replace(DEFAULT_LIMITS, admit=admit) if claim is not None or apart else DEFAULT_LIMITS
    source = CountingSource(open_source(spec, clients))
    key = index_key(desc)

    def open_blob(d: Descriptor) -> ReadAt:
        return open_source(spec, clients, d)

    index: LayerIndex | None = None
    built = False  # *index* is the one to serve from (no compact index to make)
    if saved is not None and index_path(saved).exists():
        try:
            index = CompactIndex.open(index_path(saved), key)
            built = True
        except (LazypullError, OSError, ValueError) as e:
            log.warning("index file of %s unusable (%s); building it again", desc.digest, e)
            index_path(saved).unlink(missing_ok=True)
    if index is None and saved is not None and saved.exists():
        try:
            index = open_layer_index(desc, ReplaySource(TailSource(source), saved), open_blob, cache, limits)
        except BuildApart:
            index, built = _build_apart(spec, saved, key), True
        except (LazypullError, OSError, ValueError) as e:
            log.warning("saved TOC of %s unusable (%s); fetching it again", desc.digest, e)
            saved.unlink(missing_ok=True)
    if index is None:
        rec = RecordingSource(TailSource(source))
        try:
            index = open_layer_index(desc, rec, open_blob, cache, limits)  # SOCI: the zTOC is kept in *cache*
        except BuildApart:
            assert saved is not None
            if rec.save(saved):
                index, built = _build_apart(spec, saved, key), True
            else:  # (too large to save, or no room): parsed here after all
                apart = False
                index = open_layer_index(desc, rec, open_blob, cache, limits)
        if saved is not None and not built:
            rec.save(saved)
    parsed = index
    path = index_path(saved) if saved is not None else None
    if not built and not build_in_background:
        index = _compact(parsed, path, key)
        del parsed
        if claim is not None:
            claim.release()
    fetcher = Fetcher(
        index, source, cache, name=desc.digest[7:19], timeout=spec.fetch_timeout_sec, min_fetch=spec.min_fetch
    )
    if built or not build_in_background:
        fs = LayerFS(index, fetcher)
        if claim is not None:
            claim.release()
    else:
        fs = LayerFS(
            index, fetcher, build=lambda: _compact(index, path, key, Pacer()), on_built=claim.release if claim else None
        )
    return fs, fetcher, source, index
