"""The containerd snapshotter: overlayfs snapshots, plus remote (lazily mounted) layers.

Normal snapshots behave like containerd's own overlayfs snapshotter. A Prepare that
carries a target name (``containerd.io/snapshot.ref``) and image labels for an eStargz
layer is answered by mounting that layer lazily, committing it under the target name
and reporting AlreadyExists — containerd then skips downloading the layer.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lazypull.fs.fetcher import MIN_FETCH
from lazypull.fs.fuse.server import unmount
from lazypull.fs.mountproc import (
    MountHandle,
    adopt_layer_mount,
    is_mounted,
    spawn_layer_mount,
    stop_layer_mount,
)
from lazypull.fs.spec import LayerSpec
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor
from lazypull.registry.credentials import Credential
from lazypull.snapshot.remote import LayerResolver, NotRemote
from lazypull.snapshot.store import AlreadyExists, Kind, MetaStore, NotFound, Snapshot

log = logging.getLogger(__name__)
_READY = threading.Event()
_READY.set()


@dataclass
class Mount:
    type: str
    source: str
    options: list[str] = field(default_factory=list)


@dataclass
class RemoteSettings:
    """How lazily mounted layers are fetched (from the daemon's config)."""

    cache_dir: Path
    registry: dict[str, object]
    prefetch: bool = True
    background_fetch: bool = True
    prefetch_timeout_sec: float = 10.0
    fetch_timeout_sec: float = 60.0
    max_retries: int = 4
    cache_max_bytes: int = 10 << 30
    record_access: bool = False
    passthrough: bool = False
    min_fetch: int = MIN_FETCH


class Snapshotter:
    def __init__(self, root: Path, resolver: LayerResolver | None, remote: RemoteSettings | None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)
        (root / "snapshots").mkdir(exist_ok=True, mode=0o700)
        self.store = MetaStore(root / "metadata.db")
        self.resolver = resolver
        self.remote = remote
        self._handles: dict[str, MountHandle] = {}  # layer digest -> its mount (shared by snapshots)
        self._spawning: dict[str, threading.Event] = {}  # layer digest -> set when its mount is ready
        (root / "layers").mkdir(exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self.mount_errors = 0

    def _dir(self, s: Snapshot) -> Path:
        return self.root / "snapshots" / str(s.id)

    def _fs_dir(self, s: Snapshot) -> str:
        """A snapshot's filesystem: its own directory, or the shared mount of a lazy layer."""
        if s.remote and s.remote.get("mountpoint"):
            return s.remote["mountpoint"]
        return str(self._dir(s) / "fs")

    def _layer_dir(self, digest: str) -> Path:
        return self.root / "layers" / digest.replace(":", "-")

    # -- containerd operations -----------------------------------------------------------
    def prepare(self, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        target = labels.get(mt.LABEL_SNAPSHOT_REF)
        if target and self.resolver is not None and self.remote is not None:
            if self.store.find(target) is not None:
                raise AlreadyExists(f"target snapshot {target} already exists")
            if self._prepare_remote(key, parent, target, labels):
                raise AlreadyExists(f"target snapshot {target} already exists (mounted lazily)")
        return self._create(key, parent, Kind.ACTIVE, labels)

    def view(self, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        return self._create(key, parent, Kind.VIEW, labels)

    def _create(self, key: str, parent: str, kind: Kind, labels: dict[str, str]) -> list[Mount]:
        s = self.store.create(key, parent, kind, labels)
        d = self._dir(s)
        try:
            (d / "fs").mkdir(parents=True, exist_ok=True)
            if kind == Kind.ACTIVE:
                (d / "work").mkdir(exist_ok=True)
        except OSError:
            self.store.remove(key)
            raise
        return self.mounts(key)

    def mounts(self, key: str) -> list[Mount]:
        s = self.store.get(key)
        chain = self.store.chain(s.parent) if s.parent else []
        self._wait_prefetch(chain)
        lowers = [self._fs_dir(p) for p in chain]
        d = self._dir(s)
        if s.kind == Kind.ACTIVE:
            if not lowers:
                return [Mount("bind", str(d / "fs"), ["rw", "rbind"])]
            return [
                Mount(
                    "overlay",
                    "overlay",
                    [f"workdir={d / 'work'}", f"upperdir={d / 'fs'}", "lowerdir=" + ":".join(lowers)],
                )
            ]
        if s.kind == Kind.VIEW:
            if not lowers:
                return [Mount("bind", str(d / "fs"), ["ro", "rbind"])]
            if len(lowers) == 1:
                return [Mount("bind", lowers[0], ["ro", "rbind"])]
            return [Mount("overlay", "overlay", ["lowerdir=" + ":".join(lowers)])]
        raise NotFound(f"snapshot {key} is committed; it has no mounts of its own")

    def commit(self, name: str, key: str, labels: dict[str, str]) -> None:
        self.store.commit(name, key, labels)

    def remove(self, key: str) -> None:
        s = self.store.get(key)
        self.store.remove(key)  # raises FailedPrecondition while it has children
        shutil.rmtree(self._dir(s), ignore_errors=True)
        if s.remote:
            self._release_layer(s.remote["digest"])

    def _release_layer(self, digest: str) -> None:
        """Unmount a lazy layer once no snapshot uses it (its cached chunks stay, LRU-bounded)."""
        if any(x.remote and x.remote.get("digest") == digest for x in self.store.all()):
            return
        with self._lock:
            h = self._handles.pop(digest, None)
        if h is None:
            h = adopt_layer_mount(self._layer_dir(digest) / "mount")
        if h is not None:
            stop_layer_mount(h, free_cache=True)
        else:
            self._stop_remote_dir(self._layer_dir(digest))
        shutil.rmtree(self._layer_dir(digest), ignore_errors=True)

    def stat(self, key: str) -> Snapshot:
        return self.store.get(key)

    def update(self, key: str, labels: dict[str, str], paths: list[str]) -> Snapshot:
        return self.store.update_labels(key, labels, paths)

    def list(self) -> list[Snapshot]:
        return self.store.all()

    def usage(self, key: str) -> tuple[int, int]:
        s = self.store.get(key)
        if s.remote:
            return int(s.remote.get("size", 0)), int(s.remote.get("files", 0))
        size = inodes = 0
        for dirpath, dirs, files in os.walk(self._dir(s) / "fs"):
            for n in dirs + files:
                inodes += 1
                try:
                    size += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
                except OSError:
                    pass
        return size, inodes

    def cleanup(self) -> None:
        """Remove snapshot directories that no snapshot refers to (left by crashes)."""
        snaps = self.store.all()
        known = {str(s.id) for s in snaps}
        for d in (self.root / "snapshots").iterdir():
            if d.name not in known:
                shutil.rmtree(d, ignore_errors=True)
        used = {s.remote["digest"] for s in snaps if s.remote}
        for d in (self.root / "layers").iterdir():
            digest = d.name.replace("-", ":", 1)
            if digest not in used and digest not in self._spawning:
                with self._lock:
                    h = self._handles.pop(digest, None)
                if h is not None:
                    stop_layer_mount(h)
                else:
                    self._stop_remote_dir(d)
                shutil.rmtree(d, ignore_errors=True)

    # -- remote layers -------------------------------------------------------------------
    def _prepare_remote(self, key: str, parent: str, target: str, labels: dict[str, str]) -> bool:
        assert self.resolver is not None and self.remote is not None
        t0 = time.monotonic()
        try:
            layer = self.resolver.resolve(labels)
        except NotRemote as e:
            log.info("layer for %s will be pulled normally: %s", target, e)
            return False
        # containerd prepares layers one after another: start the following ones now.
        for other in layer.image_layers:
            if other.digest != layer.layer.digest and mt.ANNOTATION_TOC_DIGEST in other.annotations:
                self._start_layer(layer.ref, other, layer.credential)
        try:
            h = self._start_layer(layer.ref, layer.layer, layer.credential)
            self._spawning.get(layer.layer.digest, _READY).wait(self.remote.fetch_timeout_sec)
            h.wait_ready(self.remote.fetch_timeout_sec)
        except Exception as e:
            self.mount_errors += 1
            log.warning("lazy mount of layer %s failed, falling back to a normal pull: %s", layer.layer.digest, e)
            with self._lock:
                self._handles.pop(layer.layer.digest, None)
            self._stop_remote_dir(self._layer_dir(layer.layer.digest))
            return False
        size = layer.layer.annotations.get(mt.ANNOTATION_UNCOMPRESSED_SIZE, str(layer.layer.size))
        self.store.create(key, parent, Kind.ACTIVE, labels)
        self.store.commit(target, key, {**labels, mt.LABEL_REMOTE: "remote snapshot"})
        self.store.set_remote(
            target,
            {
                "digest": layer.layer.digest,
                "state_dir": str(h.state_dir),
                "mountpoint": str(h.mountpoint),
                "size": size,
            },
        )
        log.info(
            "layer %s of %s mounted lazily as %s in %.2fs",
            layer.layer.digest[7:19],
            layer.ref,
            target,
            time.monotonic() - t0,
        )
        return True

    def _start_layer(self, ref: object, desc: Descriptor, credential: Credential | None = None) -> MountHandle:
        """The mount of layer *desc*: running, starting, or spawned now (without waiting)."""
        assert self.remote is not None
        rs = self.remote
        with self._lock:
            h = self._handles.get(desc.digest)
            if h is not None and (desc.digest in self._spawning or h.alive()):
                return h
            d = self._layer_dir(desc.digest)
            spec = LayerSpec(
                layer=desc.to_json(),
                cache_dir=str(rs.cache_dir),
                ref=str(ref),
                registry={**rs.registry, "credential_stdin": True} if credential else rs.registry,
                prefetch=rs.prefetch,
                background_fetch=rs.background_fetch,
                fetch_timeout_sec=rs.fetch_timeout_sec,
                max_retries=rs.max_retries,
                cache_max_bytes=rs.cache_max_bytes,
                record_access=rs.record_access,
                passthrough=rs.passthrough,
                min_fetch=rs.min_fetch,
            )
            if is_mounted(d / "fs"):
                unmount(str(d / "fs"))
            h = spawn_layer_mount(spec, d / "fs", d / "mount", credential=credential)
            self._handles[desc.digest] = h
            ready = self._spawning[desc.digest] = threading.Event()

        def wait() -> None:
            try:
                h.wait_ready(rs.fetch_timeout_sec)
            except Exception as e:
                log.info("ahead-of-time mount of %s failed: %s", desc.digest[7:19], e)
            finally:
                ready.set()
                with self._lock:
                    self._spawning.pop(desc.digest, None)

        threading.Thread(target=wait, daemon=True, name=f"mount-{desc.digest[7:15]}").start()
        return h

    def _wait_prefetch(self, chain: list[Snapshot]) -> None:
        if self.remote is None or not self.remote.prefetch:
            return
        deadline = time.monotonic() + self.remote.prefetch_timeout_sec
        for s in chain:
            if not s.remote:
                continue
            with self._lock:
                h = self._handles.get(s.remote["digest"])
            if h is not None and not h.wait_prefetch(max(0.0, deadline - time.monotonic())):
                log.info("prefetch of %s not finished within the timeout; continuing", s.key)

    def _stop_remote_dir(self, d: Path) -> None:
        h = adopt_layer_mount(d / "mount") if (d / "mount").exists() else None
        if h is not None:
            stop_layer_mount(h)
        elif is_mounted(d / "fs"):
            unmount(str(d / "fs"))

    def restore(self) -> None:
        """After a (re)start: re-adopt running layer mounts, remount those that died."""
        for s in self.store.all():
            if not s.remote or s.remote["digest"] in self._handles:
                continue
            state_dir = Path(s.remote["state_dir"])
            h = adopt_layer_mount(state_dir)
            if h is None:
                log.warning("layer mount for %s is gone; mounting it again", s.key)
                mountpoint = Path(s.remote.get("mountpoint") or state_dir.parent / "fs")
                if is_mounted(mountpoint):
                    unmount(str(mountpoint))
                try:
                    h = spawn_layer_mount(LayerSpec.load(state_dir / "spec.json"), mountpoint, state_dir)
                    h.wait_ready(60)
                except Exception as e:
                    self.mount_errors += 1
                    log.error("cannot remount layer for %s: %s", s.key, e)
                    continue
            with self._lock:
                self._handles[s.remote["digest"]] = h
        log.info("restored %d lazily mounted layers", len(self._handles))

    def handles(self) -> list[MountHandle]:
        with self._lock:
            return list(self._handles.values())

    def close(self) -> None:
        self.store.close()
