"""The layer server (``lazypull-fsd``, whose command is :mod:`lazypull.service.fsd`): one
long-lived process serving every lazily mounted layer of the node.

A layer mount is a FUSE session registered here: the server fetches and verifies the
footer and TOC, mounts, answers INIT and serves the connection from a shared request
loop (:mod:`lazypull.fs.fuse.loop`), with one chunk cache per cache directory and one
memory tier for the whole process. Clients (the snapshotter daemon, ``lazypull mount``)
talk to it on a 0600 unix socket (:mod:`lazypull.fs.fsdwire`).

Surviving its own restart: every layer's primary /dev/fuse fd is also held elsewhere —
in the fd store (``FDSTORE=1``) of systemd or, without it, of the server's fd holder
(:mod:`lazypull.service.fdholder`), and by the client that asked for the mount (it gets a
copy with the ``Mount`` reply). The layer table (specs
without credentials, INIT parameters) is saved in ``ROOT/layers/*.json``; a new server
re-attaches each layer when it gets the fd back (``LISTEN_FDS`` or ``Attach``). Requests
made meanwhile queue in the kernel; requests the dead server had read fail with EIO.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import importlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazypull.cache.chunks import ChunkCache, MemoryLRU
from lazypull.errors import LazypullError
from lazypull.format.counting import CountingSource
from lazypull.format.index import LayerIndex
from lazypull.fs.accesslog import AccessLog
from lazypull.fs.fetcher import Fetcher
from lazypull.fs.fsdclient import DEFAULT_MEMORY, HANDOVER_SEC, FsdClient, FsdError, socket_path, successor_command
from lazypull.fs.fsdwire import MAX_FDS, recv_msg, send_msg
from lazypull.fs.fuse.loop import ServeLoop
from lazypull.fs.fuse.mounts import MountRef
from lazypull.fs.fuse.server import FuseSession, InitParams, unmount
from lazypull.fs.indexmemory import IndexMemory
from lazypull.fs.layer import BUILD_WAIT, LayerFS
from lazypull.fs.spec import LayerSpec, RegistryClients, index_path, open_layer_fs
from lazypull.fsutil import atomic_write
from lazypull.giveway import Shares, request_seen
from lazypull.heap import give_back, tune
from lazypull.opstats import OpStats
from lazypull.registry.hoststats import registry_host_stats
from lazypull.service.notify import listen_fds, raise_fd_limit, sd_notify, sd_notify_fds

log = logging.getLogger("lazypull.fsd")

LOCK_FILE = "fsd.lock"
# A thread that needs the interpreter (a FUSE request, a mount's next step after a system
# call) waits at most this long for one busy with work like an index build (default 5 ms:
# a mount makes dozens of system calls, each of which would then cost up to that).
SWITCH_INTERVAL = 0.0005
_CHANGES = frozenset({"mount", "attach", "unmount"})  # refused (retry) while handing over


class HandingOver(LazypullError):
    """This server is handing its layers to a successor: the request is to be sent again."""


def fd_name(mountpoint: str) -> str:
    """The fd store name of a layer's connection (no ':' allowed; stable per mountpoint)."""
    return "l-" + hashlib.sha256(mountpoint.encode()).hexdigest()[:12]


class FailedFS:
    """Answers every request with EIO: a connection whose layer cannot be opened any more
    (after a restart, registry gone) fails its readers instead of leaving them waiting."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: object) -> Any:
            raise OSError(errno.EIO, "layer unavailable")

        return fail


@dataclass
class Layer:
    mountpoint: str
    spec: LayerSpec
    session: FuseSession | None = None
    fs: LayerFS | None = None
    fetcher: Fetcher | None = None
    source: CountingSource | None = None
    ops: OpStats = field(default_factory=OpStats)
    state: str = "mounting"  # mounting | serving | waiting-fd | dead | failed
    error: str = ""
    init: InitParams | None = None
    mount_id: str = ""  # this mount instance (a later mount at the same path gets another)
    dev: str = ""  # its FUSE connection's device ("major:minor"): how a successor knows the mount
    root: MountRef | None = None  # our hold on the instance: what a release unmounts
    prefetch_done: bool = False
    background_done: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    opened_for: str = ""  # opened ahead of a handover: the mount id and spec it was opened for

    @property
    def digest(self) -> str:
        return str(self.spec.layer.get("digest", ""))

    @property
    def index(self) -> LayerIndex | None:
        """The index the layer serves from (the compact one, once built)."""
        return self.fs.index if self.fs is not None else None

    @property
    def entries(self) -> int:
        """Inodes the layer shows, its root not counted: the compact index's count once built,
        until then the parsed index's (an upper bound: whiteouts are counted too). What the
        daemon reports as the snapshot's inodes (containerd's Usage)."""
        if self.fs is None:
            return 0
        index = self.fs.index
        return self.fs.inode_count or (len(index) if isinstance(index, Sized) else 0)

    def summary(self) -> dict[str, Any]:
        return {
            "mountpoint": self.mountpoint,
            "digest": self.digest,
            "state": self.state,
            "error": self.error,
            "mount_id": self.mount_id,
            "dev": self.dev,
            "files": self.entries,
        }

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.summary(),
            "layer": self.digest,
            "ref": self.spec.ref,  # no credentials: the daemon's status and per-host metrics
            "size": int(self.spec.layer.get("size", 0)),
            "prefetch_done": self.prefetch_done,
            "background_done": self.background_done,
        }
        if self.fetcher is None or self.fs is None or self.source is None or self.index is None:
            return out
        st = self.fetcher.stats
        out.update(
            format=self.index.format,
            files=self.fs.inode_count,
            fetched_bytes=self.source.bytes_read,
            requests=self.source.reads,
            prefetched_bytes=st.prefetched_bytes,
            background_bytes=st.background_bytes,
            profile_bytes=st.profile_bytes,
            profile_chunk_bytes=st.profile_chunk_bytes,
            profile_read_bytes=st.profile_read_bytes,
            profile_unknown_files=st.profile_unknown_files,
            cache_hits=st.cache_hits,
            cache_requests=st.cache_requests,
            fetch_errors=st.fetch_errors,
            verify_errors=st.verify_errors,
            bytes_served=self.fs.bytes_served,
            passthrough=bool(self.session and self.session.passthrough_active),
            passthrough_files=self.session.passthrough_files if self.session else 0,
            ops=self.ops.snapshot(),
            first_read=self.ops.first_of("read"),  # [wall-clock start, seconds] or None
            fetch=self.source.latency.snapshot().get("fetch"),
            index_error=self.fs.build_error,  # set: served from its parsed index, in memory
            index="compact" if self.fs.wait_built(0) else "parsed",  # parsed: its build waits or failed
        )
        return out


class LayerServer:
    def __init__(
        self,
        root: Path,
        *,
        memory_bytes: int = DEFAULT_MEMORY,
        index_memory_bytes: int = 0,
        image_index_memory_bytes: int = 0,
        readers: int = 4,
        data_threads: int = 16,
        exit_when_idle: bool = False,
    ) -> None:
        self.root = root
        self.instance = uuid.uuid4().hex[:12]
        self.started = time.time()
        self.memory = MemoryLRU(memory_bytes)
        self.index_memory = IndexMemory(index_memory_bytes, image_index_memory_bytes)
        self.caches: dict[str, ChunkCache] = {}
        self.clients = RegistryClients()
        self.layers: dict[str, Layer] = {}
        self.exit_when_idle = exit_when_idle
        self._lock = threading.Lock()
        self._mounting: dict[str, threading.Event] = {}
        self._cancelled: set[str] = set()  # unmounted while being mounted: dropped once mounted
        self.loop = ServeLoop(readers, data_threads, on_dead=self._on_dead)
        # Shared out per image and per registry host (docs/isolation.md): prefetches stuck on
        # a hung registry hold at most their host's share, and other images' go on.
        # One image prefetches as many layers at once as before (4); threads wait on sockets.
        self._prefetch = Shares(12, {"image": 4, "host": 6}, name="prefetch")
        self._background = Shares(4, {"host": 2}, name="background")
        self.idle = threading.Event()
        # Control requests being answered: an exit (idle after a failed mount, a retirement)
        # waits for their replies, or the caller sees "connection closed" instead of why.
        self._answering = 0
        self._answered = threading.Condition()
        self.handover_until = 0.0  # monotonic time until which changes are refused (handover)
        self.retired = False  # a successor serves our layers: exit leaving the socket and state to it

    # -- state on disk (no credentials) ---------------------------------------------------
    def _state_path(self, mountpoint: str) -> Path:
        return self.root / "layers" / f"{fd_name(mountpoint)}.json"

    def _save(self, ly: Layer) -> None:
        """One small file per layer (a mount costs the same with 1,000 layers as with one)."""
        assert ly.init is not None
        row = {
            "mountpoint": ly.mountpoint,
            "spec": ly.spec.public(),
            "init": ly.init.to_json(),
            "mount_id": ly.mount_id,
            "dev": ly.dev,
        }
        path = self._state_path(ly.mountpoint)
        path.parent.mkdir(exist_ok=True, mode=0o700)
        atomic_write(path, json.dumps(row).encode(), 0o600)

    def load_saved(self, only: set[str] | None = None) -> None:
        """Read the saved layer table (with *only*: those layers' rows, by :func:`fd_name`,
        adding those not known yet)."""
        for f in sorted((self.root / "layers").glob("*.json")):
            if only is not None and f.stem not in only:
                continue
            try:
                r = json.loads(f.read_text())
                ly = Layer(r["mountpoint"], LayerSpec.from_json(r["spec"]), state="waiting-fd")
                ly.init = InitParams.from_json(r["init"])
                ly.mount_id, ly.dev = str(r.get("mount_id", "")), str(r.get("dev", ""))
            except (OSError, KeyError, TypeError, ValueError) as e:
                log.warning("ignoring a malformed saved layer %s: %s", f.name, e)
                continue
            if only is None or ly.mountpoint not in self.layers:
                self.layers[ly.mountpoint] = ly
        if self.layers and only is None:
            log.info("%d layers to re-attach from the saved state", len(self.layers))

    def cache_for(self, spec: LayerSpec) -> ChunkCache:
        return self._cache(spec.cache_dir, spec.cache_max_bytes)

    def _cache(self, cache_dir: str, max_bytes: int) -> ChunkCache:
        key = os.path.realpath(cache_dir)
        with self._lock:
            c = self.caches.get(key)
            if c is None:
                c = self.caches[key] = ChunkCache(Path(key), max_bytes=max_bytes, memory=self.memory)
            return c

    # -- mounting -----------------------------------------------------------------------------
    def mount(self, spec: LayerSpec, mountpoint: str) -> Layer:
        """Mount (or return the serving mount of) a layer at *mountpoint*; concurrent calls coalesce."""
        while True:
            with self._lock:
                ly = self.layers.get(mountpoint)
                if ly is not None and ly.state == "serving" and ly.digest == spec.layer.get("digest"):
                    if spec.has_secrets:
                        ly.spec = spec  # fresh credentials for later re-attaches (memory only)
                    return ly
                ev = self._mounting.get(mountpoint)
                if ev is None:
                    ev = self._mounting[mountpoint] = threading.Event()
                    break
            ev.wait()
        try:
            old = self.layers.get(mountpoint)
            if old is not None:
                log.info("replacing the %s layer at %s", old.state, mountpoint)
                self._teardown(old, free_cache=False)
            _clear_dead_mount(mountpoint)
            ly = Layer(mountpoint, spec, mount_id=uuid.uuid4().hex[:16])
            self._open(ly, background_build=True)
            assert ly.fs is not None
            session = FuseSession(ly.fs, mountpoint, on_op=ly.ops.observe, passthrough=spec.passthrough)
            try:
                # Made right before mount(2), not before the TOC fetch: a path handed out for an
                # earlier mount of this layer shows no empty directory meanwhile (it does not exist).
                Path(mountpoint).mkdir(parents=True, exist_ok=True)
                session.mount()
            except BaseException:
                ly.fs.cancel_build()  # nothing will serve this index: do not build it
                raise
            ly.session, ly.init, ly.state = session, session.init_params, "serving"
            ly.root, session.root = session.root, None  # the layer owns the instance from here on
            ly.dev = ly.root.dev if ly.root is not None else ""
            with self._lock:
                self.layers[mountpoint] = ly
                cancelled = mountpoint in self._cancelled
            if cancelled:
                self._teardown(ly, free_cache=False)
                raise LazypullError(f"the mount at {mountpoint} was cancelled (unmounted while mounting)")
            self.loop.add(session)
            sd_notify_fds(f"FDSTORE=1\nFDNAME={fd_name(mountpoint)}", [session.fd])
            self._save(ly)
            self._start_fetching(ly)
            n = ly.fs.inode_count
            what = f"{n} entries" if n else "index building"
            log.info("layer %s mounted at %s (%s)", ly.digest[7:19], mountpoint, what)
            return ly
        finally:
            with self._lock:
                self._mounting.pop(mountpoint, None)
                self._cancelled.discard(mountpoint)
            ev.set()
            self._check_idle()

    def renew(self, spec: LayerSpec, mountpoint: str) -> bool:
        """The serving layer at *mountpoint* reads with *spec*'s (rotated) credential from now on.
        Never mounts: False if no such layer is serving (the daemon's next mount brings it)."""
        with self._lock:
            ly = self.layers.get(mountpoint)
            if ly is None or ly.state != "serving" or ly.digest != spec.layer.get("digest") or not spec.has_secrets:
                return False
            old, ly.spec = ly.spec, spec  # also what a successor gets at a handover (memory only)
        self.clients.renew(old, spec)
        return True

    def _open(self, ly: Layer, background_build: bool = False) -> None:
        """Open the layer's index; with *background_build* a new index is built while the
        mount goes ahead (Prepare does not wait for it; the first requests may)."""
        saved = self._toc_path(ly)
        image = ly.spec.ref or str(Path(ly.spec.blob_path).parent)
        fs, fetcher, source, _ = open_layer_fs(
            ly.spec,
            self.cache_for(ly.spec),
            saved,
            self.clients,
            build_in_background=background_build,
            claim=self.index_memory.claim(image, ly.digest),
        )
        if ly.spec.record_access:
            fs.accessed = AccessLog()
        ly.fs, ly.fetcher, ly.source = fs, fetcher, source

    def _toc_path(self, ly: Layer) -> Path:
        return self.root / "tocs" / f"{fd_name(ly.mountpoint)}-{ly.digest.partition(':')[2][:16]}"

    def attach(self, mountpoint: str, fd: int, spec: LayerSpec | None = None) -> Layer:
        """Serve a connection mounted by an earlier server: its fd comes back from the holder."""
        with self._lock:
            ly = self.layers.get(mountpoint)
            if ly is not None and ly.state == "serving":
                os.close(fd)  # already served (the fd store gave it back first)
                return ly
        if ly is None or ly.init is None:
            os.close(fd)
            raise LazypullError(f"no saved state for the layer at {mountpoint}")
        if spec is not None:
            ly.spec = spec
        session_fs: Any
        try:
            if ly.fs is None or not ly.opened_for or ly.state != "waiting-fd":
                self._open(ly)  # (else opened ahead of a handover, for this mount and spec)
            ly.opened_for = ""
            session_fs = ly.fs
            ly.state = "serving"
        except Exception as e:
            log.error("layer at %s cannot be re-opened (%s); its readers get EIO", mountpoint, e)
            session_fs, ly.state, ly.error = FailedFS(), "failed", str(e)
        session = FuseSession(session_fs, mountpoint, on_op=ly.ops.observe, passthrough=ly.spec.passthrough)
        try:
            session.attach(fd, ly.init)
        except OSError as e:
            os.close(fd)
            ly.state, ly.error = "dead", str(e)
            raise LazypullError(f"cannot re-attach the layer at {mountpoint}: {e}") from None
        ly.session = session
        if ly.dev and ly.root is None:
            try:
                ly.root = MountRef.open(mountpoint, expect_dev=ly.dev)
            except OSError as e:  # detached: still served for whoever holds it, never unmounted by path
                log.warning("layer at %s: its connection is no longer what the path shows (%s)", mountpoint, e)
        self.loop.add(session)
        sd_notify_fds(f"FDSTORE=1\nFDNAME={fd_name(mountpoint)}", [session.fd])
        if ly.state == "serving":
            self._start_fetching(ly)
            log.info("layer %s re-attached at %s", ly.digest[7:19], mountpoint)
        return ly

    def _start_fetching(self, ly: Layer) -> None:
        fetcher = ly.fetcher
        assert fetcher is not None
        # The keys its fetching is shared out by (docs/isolation.md): its registry host and its
        # image; a layer read from a local blob counts its directory (a layout) as both.
        host = image = "file:" + os.path.dirname(ly.spec.blob_path)
        if ly.spec.ref:
            from lazypull.registry.reference import Reference

            image = ly.spec.ref
            try:
                host = Reference.parse(image).registry
            except LazypullError:
                host = image
        fetcher.share = host
        keys = {"image": image, "host": host}

        def prefetch() -> None:
            try:
                if ly.spec.prefetch and not ly.stop.is_set():
                    t0 = time.monotonic()
                    n = fetcher.prefetch()
                    log.info("layer %s: prefetched %d bytes in %.2fs", ly.digest[7:19], n, time.monotonic() - t0)
            except Exception as e:
                log.warning("layer %s: prefetch failed: %s", ly.digest[7:19], e)
            finally:
                ly.prefetch_done = True
            plan = ly.spec.profile_plan()
            if plan and ly.spec.profile_budget > 0 and not ly.stop.is_set():
                # In parallel with the container start (it waits for the landmark prefetch only),
                # ahead of the background fetch.
                try:
                    t0 = time.monotonic()
                    n = fetcher.profile_fetch(plan, ly.spec.profile_budget, ly.stop)
                    log.info(
                        "layer %s: fetched %d bytes of %d profiled files in %.2fs",
                        ly.digest[7:19],
                        n,
                        len(plan),
                        time.monotonic() - t0,
                    )
                except Exception as e:
                    log.warning("layer %s: profile prefetch failed: %s", ly.digest[7:19], e)
            if ly.spec.background_fetch and not ly.stop.is_set():
                self._background.submit(background, {"host": host})

        def background() -> None:
            if ly.stop.is_set():
                return
            try:
                n = fetcher.background_fetch(ly.stop)
                ly.background_done = not ly.stop.is_set()
                log.info("layer %s: background fetch done (%d bytes)", ly.digest[7:19], n)
            except Exception as e:
                log.warning("layer %s: background fetch failed: %s", ly.digest[7:19], e)

        if not ly.spec.prefetch and not ly.spec.profile:
            ly.prefetch_done = True
            if ly.spec.background_fetch:
                self._background.submit(background, {"host": host})
            return
        self._prefetch.submit(prefetch, keys)

    # -- unmounting -----------------------------------------------------------------------
    def unmount(self, mountpoint: str, free_cache: bool = False, mount_id: str | None = None) -> list[str]:
        """Unmount a layer; returns the files read through it (with ``record_access``).

        *mount_id*: only that mount instance; a later mount at the path (another owner's) is
        left alone. Without it (``lazypull umount``), whatever the path shows."""
        with self._lock:
            ly = self.layers.get(mountpoint)
            if mount_id is not None and (ly is None or ly.mount_id != mount_id):
                log.info("unmount of %s (mount %s) asked: not the mount there now; nothing done", mountpoint, mount_id)
                return []
            self.layers.pop(mountpoint, None)
            if ly is None and mountpoint in self._mounting:
                self._cancelled.add(mountpoint)
        if ly is None:
            if os.path.ismount(mountpoint) or _is_dead_mount(mountpoint):
                unmount(mountpoint)
            self._check_idle()
            return []
        accessed = self._teardown(ly, free_cache)
        del ly
        give_back()  # what the layer held (its tree's caches, its last build's leftovers)
        self._check_idle()
        return accessed

    def _teardown(self, ly: Layer, free_cache: bool) -> list[str]:
        ly.stop.set()
        if ly.session is not None:
            self.loop.remove(ly.session)
        _unmount_instance(ly)
        if ly.session is not None:
            ly.session.close()
        sd_notify(f"FDSTOREREMOVE=1\nFDNAME={fd_name(ly.mountpoint)}")
        self._toc_path(ly).unlink(missing_ok=True)
        if ly.fs is not None:
            ly.fs.cancel_build()
            ly.fs.wait_built(BUILD_WAIT)  # a build still running would write the file after us
        index_path(self._toc_path(ly)).unlink(missing_ok=True)
        self._state_path(ly.mountpoint).unlink(missing_ok=True)
        with self._lock:
            if self.layers.get(ly.mountpoint) is ly:
                del self.layers[ly.mountpoint]
        accessed = ["/" + p for p in (ly.fs.accessed or {})] if ly.fs is not None else []
        if ly.fetcher is not None:
            ly.fetcher.cache.flush()
            if free_cache and ly.index is not None:
                freed = self._free_chunks(ly)
                log.info("layer %s released: removed %d chunks from the cache", ly.digest[7:19], freed)
        if ly.fs is not None:
            ly.fs.close()  # its index file's mapping and fd: the layer object may outlive us
        log.info("layer %s unmounted from %s", ly.digest[7:19], ly.mountpoint)
        return accessed

    def _free_chunks(self, ly: Layer) -> int:
        """Remove the layer's chunks, except those another mounted layer of the same cache uses."""
        assert ly.fetcher is not None and ly.index is not None
        cache = ly.fetcher.cache
        with self._lock:
            others = [o for o in self.layers.values() if o.fetcher is not None and o.fetcher.cache is cache]
        keep: set[str] = set()
        for o in others:
            if o.index is not None:
                keep |= o.index.digests()
        mine = ly.index.digests()
        return sum(cache.remove(d) for d in mine - keep)

    def _on_dead(self, session: FuseSession) -> None:
        with self._lock:
            ly = self.layers.get(session.mountpoint)
        if ly is not None and ly.session is session and ly.state == "serving":
            ly.state, ly.error = "dead", "FUSE connection ended (unmounted or aborted)"
            log.warning("layer %s at %s: %s", ly.digest[7:19], ly.mountpoint, ly.error)
            ly.stop.set()

    def _check_idle(self) -> None:
        with self._lock:
            idle = not self.layers and all(m in self._cancelled for m in self._mounting)
        if self.exit_when_idle and idle:
            self.idle.set()  # mounts still fetching a TOC nobody wants hold nothing worth waiting for

    # -- control requests -----------------------------------------------------------------
    # -- handing over to a successor (planned restart or upgrade) -------------------------------
    def handed(self) -> list[dict[str, Any]]:
        """The layers a successor is to serve: mount point, mount id, spec (with credentials:
        memory to memory, over the 0600 socket)."""
        with self._lock:
            return [
                {"mountpoint": ly.mountpoint, "mount_id": ly.mount_id, "state": ly.state, "spec": ly.spec.to_json()}
                for ly in self.layers.values()
                if ly.session is not None and ly.state in ("serving", "failed")
            ]

    def begin_handover(self, wait: float = 30.0) -> dict[str, Any]:
        """Stop taking changes and list the layers a successor is to serve; it then gets their
        fds (``fds``) and serves them beside us until it tells us to ``retire``. (It opened
        them before, from ``specs``: the changes we refuse meanwhile are refused briefly.)"""
        self.handover_until = time.monotonic() + HANDOVER_SEC
        deadline = time.monotonic() + wait
        while True:
            with self._lock:
                busy = bool(self._mounting)
            layers = self.handed()
            if not busy:
                break
            if time.monotonic() > deadline:
                self.handover_until = 0.0
                raise LazypullError("layers are still being mounted; handover refused")
            time.sleep(0.02)
        log.info("handing %d layers over to a successor", len(layers))
        return {"pid": os.getpid(), "instance": self.instance, "layers": layers}

    def retire(self) -> None:
        """The successor serves every layer now: stop reading, answer what is in flight, exit."""
        self.retired = True
        self.idle.set()

    def handle(self, req: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        op = req.get("op")
        if op in _CHANGES and (self.retired or time.monotonic() < self.handover_until):
            for fd in fds:
                os.close(fd)
            raise HandingOver("the layer server is handing over to its successor; retry")
        if op == "specs":  # what a successor opens while we serve, before it asks for the handover
            return {"pid": os.getpid(), "layers": self.handed()}, []
        if op == "handover":
            return self.begin_handover(), []
        if op == "retire":
            self.retire()
            return {"ok": True}, []
        if op == "mount":
            ly = self.mount(LayerSpec.from_json(req["spec"]), str(req["mountpoint"]))
            return {"layer": ly.summary()}, [ly.session.fd] if ly.session else []
        if op == "renew":  # a rotated credential for a serving layer (never mounts one)
            return {"renewed": self.renew(LayerSpec.from_json(req["spec"]), str(req["mountpoint"]))}, []
        if op == "attach":
            out = []
            for item, fd in zip(req.get("layers", []), fds, strict=False):
                spec = LayerSpec.from_json(item["spec"]) if item.get("spec") else None
                try:
                    out.append(self.attach(str(item["mountpoint"]), fd, spec).summary())
                except LazypullError as e:
                    out.append({"mountpoint": item["mountpoint"], "state": "dead", "error": str(e)})
            for fd in fds[len(req.get("layers", [])) :]:
                os.close(fd)
            return {"layers": out}, []
        if op == "unmount":
            mid = req.get("mount_id")
            accessed = self.unmount(str(req["mountpoint"]), bool(req.get("free_cache")), str(mid) if mid else None)
            return {"accessed": accessed}, []
        if op == "states":  # of given mount instances: a cheap question asked before each container start
            want = {str(m) for m in req.get("mount_ids") or []}
            with self._lock:
                found = {ly.mount_id: ly.state for ly in self.layers.values() if ly.mount_id in want}
            return {"states": {m: found.get(m, "missing") for m in want}}, []
        if op == "list":
            with self._lock:
                return {"layers": [ly.summary() for ly in self.layers.values()]}, []
        if op == "status":
            with self._lock:
                states = [ly.state for ly in self.layers.values()]
            return {
                "pid": os.getpid(),
                "instance": self.instance,
                "started": self.started,
                "layers": len(states),
                "serving": states.count("serving"),
            }, []
        if op == "stats":
            want = set(req.get("mountpoints") or [])
            with self._lock:
                layers = [ly for ly in self.layers.values() if not want or ly.mountpoint in want]
            caches = [{"dir": k, "disk_bytes": c.disk_bytes, "max_bytes": c.max_bytes} for k, c in self.caches.items()]
            rows = [ly.stats() for ly in layers]
            if req.get("accessed"):
                for ly, row in zip(layers, rows, strict=True):
                    log_ = ly.fs.accessed if ly.fs else None
                    row["accessed"] = ["/" + p for p in (log_ or ())]
                    row["access_log"] = log_.rows() if log_ is not None else []
            return {
                "layers": rows,
                "caches": caches,
                "memory_bytes": self.memory.size,
                "index_memory": self.index_memory.stats(),
                "pid": os.getpid(),
                "registry_hosts": registry_host_stats(),
            }, []
        if op == "adopt":  # chunks the daemon's hint prefetcher wrote: under this server's one bound
            cache = self._cache(str(req["cache_dir"]), int(req["max_bytes"]))
            return {"adopted": cache.adopt(str(d) for d in req.get("digests") or [])}, []
        if op == "fds":
            asked = list(req.get("mountpoints") or [])[:MAX_FDS]
            with self._lock:
                got = [(m, self.layers[m]) for m in asked if m in self.layers]
            pairs = [(m, ly.session.fd) for m, ly in got if ly.session is not None and ly.session.fd >= 0]
            return {"mountpoints": [m for m, _ in pairs]}, [fd for _, fd in pairs]
        if op == "shutdown":
            if req.get("unmount_all"):
                for m in list(self.layers):
                    self.unmount(m)
            self.idle.set()
            return {"ok": True}, []
        raise LazypullError(f"unknown request {op!r}")

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Around a control request, from reading it to sending its reply."""
        with self._answered:
            self._answering += 1
        try:
            yield
        finally:
            with self._answered:
                self._answering -= 1
                self._answered.notify_all()

    def drain(self, timeout: float = 5.0) -> None:
        """Stop reading requests and answer every one read (a planned exit, or retiring: the
        successor reads the connections already, so the next requests go to it), control
        requests included."""
        t0 = time.monotonic()
        with self._answered:
            self._answered.wait_for(lambda: self._answering == 0, timeout)
        with self._lock:
            sessions = [ly.session for ly in self.layers.values() if ly.session is not None]
        for s in sessions:
            self.loop.remove(s)
        done = self.loop.drain(timeout)
        log.info(
            "stopped reading %d layers; %s in %.1f ms",
            len(sessions),
            "answered every request read" if done else f"requests still unanswered after {timeout:.0f}s",
            (time.monotonic() - t0) * 1000,
        )

    # -- taking over from a predecessor --------------------------------------------------------
    def prepare(self, specs: dict[str, tuple[str, LayerSpec]]) -> None:
        """Before asking for the handover, while the old server serves and takes changes:
        open what serving the layers takes — each cache directory (a scan of its files) and
        each layer of *specs* (mount point -> mount id, spec) known from the saved table (its
        index mapped and checked, or built). What the handover then adds is passing fds."""
        for saved in list(self.layers.values()):
            self.cache_for(saved.spec)
        for mp, (mount_id, spec) in specs.items():
            ly = self.layers.get(mp)
            if ly is None or ly.mount_id != mount_id or ly.state != "waiting-fd":
                continue  # mounted after the table was read: opened when it is attached
            ly.spec = spec
            try:
                self._open(ly)
            except Exception as e:  # opened again (and failed as it must) when attached
                log.info("layer at %s not opened ahead of the handover: %s", mp, e)
                continue
            ly.opened_for = _opened_key(mount_id, spec)

    def adopt_handover(self, handed: dict[str, tuple[str, LayerSpec]]) -> None:
        """The layer table is the predecessor's from its handover on: rows of layers mounted
        since we read it are read now, layers unmounted since are dropped, and a layer opened
        ahead for another mount or spec (a rotated credential) is opened again when attached."""
        missing = {fd_name(mp) for mp in handed if mp not in self.layers}
        if missing:
            self.load_saved(only=missing)
        for mp, ly in list(self.layers.items()):
            got = handed.get(mp)
            if ly.opened_for and (got is None or ly.opened_for != _opened_key(*got)):
                self._close_unserved(ly)
            if got is None and ly.state == "waiting-fd":
                del self.layers[mp]

    @staticmethod
    def _close_unserved(ly: Layer) -> None:
        if ly.fs is not None:
            ly.fs.cancel_build()
            ly.fs.close()
        ly.fs = ly.fetcher = ly.source = None
        ly.opened_for = ""


# Imported by a layer's first mount; a fresh server imports them at its start instead, so
# the first layer (the one a Prepare waits for) does not pay for it (20-40 ms, measured).
MOUNT_MODULES = (
    "lazypull.registry.blobsource",
    "lazypull.registry.client",
    "lazypull.registry.reference",
    "lazypull.registry.transport",
    "lazypull.format.zstdchunked",
)


def preload() -> None:
    for name in MOUNT_MODULES:
        importlib.import_module(name)


def _opened_key(mount_id: str, spec: LayerSpec) -> str:
    return json.dumps([mount_id, spec.to_json()], sort_keys=True)


def _unmount_instance(ly: Layer) -> None:
    """Detach the layer's own mount: the instance it holds, or (re-attached after a restart)
    the mount its path shows if that is its connection; never a later mount at the path."""
    root = ly.root
    if root is None and ly.dev:
        try:
            root = MountRef.open(ly.mountpoint, expect_dev=ly.dev)
        except OSError as e:
            log.info("layer %s: its mount at %s is gone already (%s)", ly.digest[7:19], ly.mountpoint, e)
            return
    if root is None:  # saved by a server that did not record devices: as it did, by path
        unmount(ly.mountpoint)
        return
    try:
        root.unmount()
    finally:
        root.close()
        ly.root = None


def _clear_dead_mount(path: str) -> None:
    """Before mounting at *path*: a dead mount there (its server gone, nobody holding it) is
    detached; a live one that no layer of ours owns is never mounted over."""
    try:
        ref = MountRef.open(path)
    except OSError:
        return  # nothing mounted there (or no directory yet)
    try:
        if not _is_dead_mount(path):
            raise LazypullError(f"{path} is already mounted by something this layer server does not own")
        ref.unmount()
    finally:
        ref.close()


def _is_dead_mount(path: str) -> bool:
    """A mount point whose FUSE server is gone (stat fails with ENOTCONN)."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def serve_control(server: LayerServer, sock: socket.socket) -> None:
    def one(conn: socket.socket) -> None:
        with conn:
            try:
                req, fds = recv_msg(conn)
            except (OSError, LazypullError) as e:
                log.debug("control connection: %s", e)
                return
            request_seen()  # a caller waits on this one too: index builds give way
            with server.answering():
                try:
                    reply, out_fds = server.handle(req, fds)
                except (LazypullError, OSError, KeyError, ValueError, TypeError) as e:
                    (log.debug if isinstance(e, HandingOver) else log.warning)(
                        "%s request failed: %s", req.get("op"), e
                    )
                    msg = str(e) if isinstance(e, LazypullError) else f"{type(e).__name__}: {e}"
                    reply, out_fds = {"error": msg}, []
                    if isinstance(e, HandingOver):
                        reply["retry"] = True
                with contextlib.suppress(OSError):
                    send_msg(conn, reply, out_fds)

    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=one, args=(conn,), daemon=True, name="control").start()


def _handed(rows: list[dict[str, Any]]) -> dict[str, tuple[str, LayerSpec]]:
    return {str(r["mountpoint"]): (str(r.get("mount_id", "")), LayerSpec.from_json(r["spec"])) for r in rows}


def take_over(server: LayerServer, address: Path) -> tuple[socket.socket, int] | None:
    """Serve the layers of the server running at *address* beside it; None when none runs.

    First, while it serves and takes changes, everything that takes time: the layers it
    serves (``specs``) are opened here (:meth:`LayerServer.prepare`). Then the handover: it
    refuses changes, we get each layer's fd and serve it beside it. Returns a connection
    opened to it before we take its socket (to tell it to retire on) and its pid. Both
    generations read requests meanwhile, each answering what it read: nothing queues,
    nothing fails, and no read waits for this process to start."""
    client = FsdClient(address, timeout=60)
    st = client.alive()
    if st is None:
        return None
    t0 = time.monotonic()
    try:
        rows = [r for r in client.call("specs", timeout=60)[0]["layers"] if r.get("state") == "serving"]
    except FsdError as e:  # a server of an earlier version: its layers are opened once handed over
        log.info("the running layer server lists no layers ahead of its handover (%s)", e)
        rows = []
    server.prepare(_handed(rows))
    t1 = time.monotonic()
    retire = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    retire.connect(str(address))
    reply = client.call("handover", timeout=60)[0]
    handed = _handed(reply["layers"])
    server.adopt_handover(handed)
    fds = client.fds(list(handed))
    taken = 0
    for mp, fd in fds.items():
        try:
            if server.attach(mp, fd, handed[mp][1]).state == "serving":
                taken += 1
        except LazypullError as e:
            log.error("%s", e)
    log.info(
        "took over %d of %d layers from the layer server pid %s: prepared in %.0f ms while it served, "
        "then serving them all %.0f ms after its handover began",
        taken,
        len(handed),
        reply["pid"],
        (t1 - t0) * 1000,
        (time.monotonic() - t1) * 1000,
    )
    return retire, int(reply["pid"])


def _spawn_successor() -> None:
    """SIGHUP: start our own command line with --takeover beside us (the same binary path;
    the unit's ExecReload runs the installed binary instead: :func:`lazypull.fs.fsdclient.reload`)."""
    log.info("starting a successor to take the layers over")
    try:
        subprocess.Popen(successor_command(), stdin=subprocess.DEVNULL, close_fds=True)
    except OSError as e:
        log.error("cannot start a successor: %s", e)


def _await_lock(lock: int, predecessor: int, timeout: float = 30.0) -> None:
    """Take the state lock once the retiring server has exited (killed if it does not)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if time.monotonic() > deadline:
            log.warning("the retiring layer server (pid %d) did not exit; killing it", predecessor)
            with contextlib.suppress(ProcessLookupError):
                os.kill(predecessor, signal.SIGKILL)
            fcntl.flock(lock, fcntl.LOCK_EX)
            return
        time.sleep(0.005)  # a flock(2) a few ms: the successor is ready soon after the old one exits


def serve(args: argparse.Namespace) -> int:
    """Serve (``lazypull-fsd`` without ``--reload``; its arguments: :func:`lazypull.service.fsd.add_args`)."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    tune()  # before any thread starts: few malloc arenas, fixed thresholds (lazypull.heap)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    raise_fd_limit()
    sys.setswitchinterval(SWITCH_INTERVAL)
    address = Path(args.address) if args.address else socket_path(root)
    lock = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked = True
    except BlockingIOError:
        locked = False
        if not args.takeover:
            log.info("another layer server already serves %s", root)
            return 0
    preload()
    server = LayerServer(
        root,
        memory_bytes=args.memory_bytes,
        index_memory_bytes=args.index_memory_bytes,
        image_index_memory_bytes=args.image_index_memory_bytes,
        readers=args.readers,
        data_threads=args.data_threads,
        exit_when_idle=args.exit_when_idle,
    )
    server.load_saved()
    handover = None if locked else take_over(server, address)
    if not locked and handover is None:
        _await_lock(lock, 0)  # it was exiting as we came
    if handover is None:
        for name, fds in listen_fds().items():
            for m in list(server.layers):
                if fd_name(m) == name and fds:
                    try:
                        server.attach(m, fds.pop(0))
                    except LazypullError as e:
                        log.error("%s", e)
            for fd in fds:
                os.close(fd)
    address.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(str(address))
    finally:
        os.umask(old)
    os.chmod(address, 0o600)
    sock.listen(64)
    threading.Thread(target=serve_control, args=(server, sock), daemon=True, name="accept").start()
    if handover is not None:
        retire, predecessor = handover
        sd_notify(f"MAINPID={os.getpid()}")  # before it exits: systemd must not see the service end
        with retire:
            retire.settimeout(30)
            try:
                send_msg(retire, {"op": "retire"})
                recv_msg(retire)
            except (OSError, LazypullError) as e:
                log.warning("the retiring layer server did not confirm: %s", e)
        _await_lock(lock, predecessor)
    stop = threading.Event()

    def on_term(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=_spawn_successor, daemon=True).start())

    def stop_when_idle() -> None:
        server.idle.wait()
        stop.set()

    threading.Thread(target=stop_when_idle, daemon=True).start()
    sd_notify(f"READY=1\nMAINPID={os.getpid()}")
    log.info("layer server %s serving on %s (root %s)", server.instance, address, root)
    idle_since = time.monotonic()
    while not stop.wait(2.0):
        sd_notify("WATCHDOG=1")
        if server.layers or server._mounting:
            idle_since = time.monotonic()
        elif server.exit_when_idle and time.monotonic() - idle_since > 30:
            break  # started for mounts that never came (or all went away)
    if not server.retired:
        sd_notify("STOPPING=1")  # (a retiring server is no longer the service's main process)
    server.drain()
    for c in server.caches.values():
        c.flush()
    if server.retired:
        log.info("layer server exiting: its successor serves its %d layers", len(server.layers))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # the socket, the state and the mounts are the successor's now
    log.info("layer server exiting; %d layers stay mounted for the next one", len(server.layers))
    address.unlink(missing_ok=True)  # we hold the lock: no successor has bound it yet
    if not server.layers:  # nothing to hand over: leave no state behind
        (root / LOCK_FILE).unlink(missing_ok=True)
        for d in ("tocs", "layers"):
            with contextlib.suppress(OSError):
                (root / d).rmdir()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # reader threads block in epoll; no need to wait for them
