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
from lazypull.snapshot.remote import LayerResolver, NotRemote
from lazypull.snapshot.store import AlreadyExists, Kind, MetaStore, NotFound, Snapshot

log = logging.getLogger(__name__)


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


class Snapshotter:
    def __init__(self, root: Path, resolver: LayerResolver | None, remote: RemoteSettings | None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)
        (root / "snapshots").mkdir(exist_ok=True, mode=0o700)
        self.store = MetaStore(root / "metadata.db")
        self.resolver = resolver
        self.remote = remote
        self._handles: dict[str, MountHandle] = {}  # committed name -> layer mount
        self._lock = threading.Lock()
        self.mount_errors = 0

    def _dir(self, s: Snapshot) -> Path:
        return self.root / "snapshots" / str(s.id)

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
        lowers = [str(self._dir(p) / "fs") for p in chain]
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
        if self.store.children(key):
            self.store.remove(key)  # raises FailedPrecondition
        with self._lock:
            h = self._handles.pop(key, None)
        if h is not None:
            stop_layer_mount(h)
        elif s.remote:
            self._stop_remote_dir(self._dir(s))
        self.store.remove(key)
        shutil.rmtree(self._dir(s), ignore_errors=True)

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
        known = {str(s.id) for s in self.store.all()}
        for d in (self.root / "snapshots").iterdir():
            if d.name not in known:
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
        s = self.store.create(key, parent, Kind.ACTIVE, labels)
        d = self._dir(s)
        rs = self.remote
        spec = LayerSpec(
            layer=layer.layer.to_json(),
            cache_dir=str(rs.cache_dir),
            ref=str(layer.ref),
            registry=rs.registry,
            prefetch=rs.prefetch,
            background_fetch=rs.background_fetch,
            fetch_timeout_sec=rs.fetch_timeout_sec,
            max_retries=rs.max_retries,
            cache_max_bytes=rs.cache_max_bytes,
            record_access=rs.record_access,
            passthrough=rs.passthrough,
        )
        try:
            h = spawn_layer_mount(spec, d / "fs", d / "mount")
            h.wait_ready(rs.fetch_timeout_sec)
        except Exception as e:
            self.mount_errors += 1
            log.warning("lazy mount of layer %s failed, falling back to a normal pull: %s", layer.layer.digest, e)
            self._stop_remote_dir(d)
            self.store.remove(key)
            shutil.rmtree(d, ignore_errors=True)
            return False
        size = layer.layer.annotations.get(mt.ANNOTATION_UNCOMPRESSED_SIZE, str(layer.layer.size))
        self.store.commit(target, key, {**labels, mt.LABEL_REMOTE: "remote snapshot"})
        self.store.set_remote(target, {"digest": layer.layer.digest, "state_dir": str(d / "mount"), "size": size})
        with self._lock:
            self._handles[target] = h
        log.info(
            "layer %s of %s mounted lazily as %s in %.2fs",
            layer.layer.digest[7:19],
            layer.ref,
            target,
            time.monotonic() - t0,
        )
        return True

    def _wait_prefetch(self, chain: list[Snapshot]) -> None:
        if self.remote is None or not self.remote.prefetch:
            return
        deadline = time.monotonic() + self.remote.prefetch_timeout_sec
        for s in chain:
            with self._lock:
                h = self._handles.get(s.key)
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
            if not s.remote:
                continue
            d = self._dir(s)
            h = adopt_layer_mount(d / "mount")
            if h is None:
                log.warning("layer mount for %s is gone; mounting it again", s.key)
                if is_mounted(d / "fs"):
                    unmount(str(d / "fs"))
                try:
                    spec = LayerSpec.load(d / "mount" / "spec.json")
                    h = spawn_layer_mount(spec, d / "fs", d / "mount")
                    h.wait_ready(60)
                except Exception as e:
                    self.mount_errors += 1
                    log.error("cannot remount layer for %s: %s", s.key, e)
                    continue
            with self._lock:
                self._handles[s.key] = h
        log.info("restored %d lazily mounted layers", len(self._handles))

    def handles(self) -> list[MountHandle]:
        with self._lock:
            return list(self._handles.values())

    def close(self) -> None:
        self.store.close()
