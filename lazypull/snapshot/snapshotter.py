"""The containerd snapshotter: overlayfs snapshots, plus remote (lazily mounted) layers.

Normal snapshots behave like containerd's own overlayfs snapshotter. A Prepare that
carries a target name (``containerd.io/snapshot.ref``) and image labels for an eStargz
layer is answered by mounting that layer lazily, committing it under the target name
and reporting AlreadyExists — containerd then skips downloading the layer.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazypull.errors import LazypullError
from lazypull.format.soci.dispatch import is_lazy
from lazypull.fs.fetcher import MIN_FETCH
from lazypull.fs.fsdclient import FsdError, socket_path
from lazypull.fs.spec import LayerSpec
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor
from lazypull.prefetch.plan import ProfilePlan
from lazypull.registry.credentials import Credential
from lazypull.registry.options import credential_to_json
from lazypull.registry.reference import Reference
from lazypull.snapshot import fallback
from lazypull.snapshot.filters import index_hints
from lazypull.snapshot.filters import parse as parse_filters
from lazypull.snapshot.imagebook import FALLBACK, LAZY, ImageBook
from lazypull.snapshot.layers import LayerMountError, MountedLayer, RemoteLayers, spec_of
from lazypull.snapshot.lifecycle import Lease
from lazypull.snapshot.profiles import ProfileLookup
from lazypull.snapshot.remote import LayerResolver, NotRemote, target_of
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
    min_fetch: int = MIN_FETCH
    fsd_address: Path | None = None  # the layer server's socket (default ROOT/fsd.sock)
    memory_bytes: int | None = None  # the layer server's memory cache (all layers)
    index_memory_bytes: int = 0  # the layer server's index memory budget (0: its default)
    image_index_memory_bytes: int = 0  # one image's share of it (0: half)
    profile_budget: int = 0  # content bytes an image's prefetch profile may fetch (0: profiles not looked up)
    profile_timeout_sec: float = 3.0  # the profile lookup's deadline (within the resolver's)


class Snapshotter:
    def __init__(self, root: Path, resolver: LayerResolver | None, remote: RemoteSettings | None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)
        (root / "snapshots").mkdir(exist_ok=True, mode=0o700)
        self.store = MetaStore(root / "metadata.db")
        self.resolver = resolver
        self.remote = remote
        (root / "layers").mkdir(exist_ok=True, mode=0o700)
        # Which layers stay mounted: those a snapshot uses (the store says) or a pull holds.
        self.layers = RemoteLayers(
            root,
            (remote.fsd_address if remote and remote.fsd_address else socket_path(root)),
            in_use=self.store.uses_layer,
            mount_timeout=remote.fetch_timeout_sec if remote else 60.0,
            memory_bytes=remote.memory_bytes if remote else None,
            index_memory=(remote.index_memory_bytes, remote.image_index_memory_bytes) if remote else (0, 0),
        )
        self.mount_errors = 0
        self.profiles = (
            ProfileLookup(remote.profile_budget, min(remote.profile_timeout_sec, resolver.timeout))
            if remote is not None and resolver is not None and remote.profile_budget > 0
            else None
        )
        self.book = ImageBook()  # per image: lazy or why not, its pods (lazypull status)

    def _dir(self, s: Snapshot) -> Path:
        return self.root / "snapshots" / str(s.id)

    def _fs_dir(self, s: Snapshot) -> str:
        """A snapshot's filesystem: its own directory, or the shared mount of a lazy layer."""
        if s.remote and s.remote.get("mountpoint"):
            return s.remote["mountpoint"]
        return str(self._dir(s) / "fs")

    def _layer_dir(self, digest: str) -> Path:
        return self.root / "layers" / digest.replace(":", "-")

    def _layer_mountpoint(self, digest: str) -> Path:
        return self._layer_dir(digest) / "fs"

    # -- containerd operations -----------------------------------------------------------
    def prepare(self, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        target = labels.get(mt.LABEL_SNAPSHOT_REF)
        if target and self.resolver is not None and self.remote is not None:
            existing = self.store.find(target)
            if existing is not None and self._usable(existing):
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
            return self.mounts(key)
        except (OSError, LazypullError):  # e.g. a lower layer that cannot be served: nothing is left
            self.store.remove(key)
            shutil.rmtree(d, ignore_errors=True)
            raise

    def mounts(self, key: str) -> list[Mount]:
        s = self.store.get(key)
        chain = self.store.chain(s.parent) if s.parent else []
        for p in chain:
            if p.remote:
                self._check_served(p)
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
            self.layers.settle(s.remote["digest"])  # unmounted if nothing else uses it (nor a pull holds it)

    def _remote_lease(self, s: Snapshot) -> Lease[MountedLayer]:
        assert s.remote is not None
        digest = s.remote["digest"]
        mp = Path(s.remote.get("mountpoint") or self._layer_mountpoint(digest))
        return self.layers.lease(digest, mp, lambda: self._with_keychain(spec_of(s.remote or {})))

    def _check_served(self, s: Snapshot) -> None:
        """Before containerd gets a lower directory for a lazy layer: the path shows that
        layer's live mount (an empty directory would silently be the layer), or it is mounted
        again now; if it cannot be, the error goes to containerd, never the directory."""
        assert s.remote is not None
        with self._remote_lease(s) as lease:
            try:
                lease.wait_live(self.remote.fetch_timeout_sec if self.remote else 60.0)
            except LayerMountError as e:
                self.mount_errors += 1
                digest = s.remote["digest"]
                raise LayerMountError(f"lazily mounted layer {digest} ({s.key}) is not served: {e}") from None

    def _usable(self, s: Snapshot) -> bool:
        """A committed target is reported as existing only if its lazy layer really serves;
        a dead one is mounted again, and if that fails the snapshot goes (pulled normally)."""
        if not s.remote:
            return True
        digest = s.remote["digest"]
        with self._remote_lease(s) as lease:
            e = self.layers.lifecycle.get(digest)
            if e is None or e.mounted is None or not self.layers.lifecycle.mounter.live(e.mounted):
                log.warning("layer %s of %s is not serving: mounting it again", digest[7:19], s.key)
            try:
                lease.wait_live(self.remote.fetch_timeout_sec if self.remote else 60.0)
                return True
            except LayerMountError as x:
                self.mount_errors += 1
                log.error("layer %s cannot be mounted again (%s): %s is removed", digest[7:19], x, s.key)
            try:
                self.store.remove(s.key)
            except LazypullError:
                return True  # it has children: they keep failing until removed, as containerd's would
        self.layers.settle(digest)
        return False

    def stat(self, key: str) -> Snapshot:
        return self.store.get(key)

    def update(self, key: str, labels: dict[str, str], paths: list[str]) -> Snapshot:
        return self.store.update_labels(key, labels, paths)

    def list(self, filters: list[str] | None = None) -> list[Snapshot]:
        """Snapshots matching containerd's *filters* (all when none)."""
        if not filters:
            return self.store.all()
        match = parse_filters(filters)
        hints = index_hints(filters)
        if hints is None:
            candidates = self.store.all()
        else:  # containerd's per-layer Walk names the parent: an indexed lookup, not a scan
            keys = {v for f, v in hints if f == "name"}
            for f, v in hints:
                if f == "parent":
                    keys.update(self.store.children(v))
            candidates = sorted((s for k in keys if (s := self.store.find(k)) is not None), key=lambda s: s.id)
        return [s for s in candidates if match(s)]

    def usage(self, key: str) -> tuple[int, int]:
        """(bytes, inodes) of the snapshot alone. A lazy layer reports what it stands for (its
        uncompressed size and the entries the layer server counted at its mount), not the
        little it holds on disk: containerd and the kubelet then see what a normal pull would."""
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
        # Directories first, the store after: a snapshot's row is written before its directory
        # is made, so a directory seen here whose row is missing then was removed, never one
        # being created right now (containerd collects while other containers start).
        dirs = list((self.root / "snapshots").iterdir())
        snaps = self.store.all()
        known = {str(s.id) for s in snaps}
        for d in dirs:
            if d.name not in known:
                shutil.rmtree(d, ignore_errors=True)
        self.layers.lifecycle.sweep(end_timed=True)  # layers mounted ahead for pulls that did not come back
        used = {s.remote["digest"] for s in snaps if s.remote}
        for d in (self.root / "layers").iterdir():
            digest = d.name.replace("-", ":", 1)
            if digest not in used:
                self.layers.lifecycle.tidy(digest, d / "fs")  # removed unless a pull holds it now

    # -- remote layers -------------------------------------------------------------------
    def _prepare_remote(self, key: str, parent: str, target: str, labels: dict[str, str]) -> bool:
        assert self.resolver is not None and self.remote is not None
        t0 = time.monotonic()
        named = target_of(labels)
        if named is not None:
            self.book.prepared(named[0])
        try:
            layer = self.resolver.resolve(labels)
        except NotRemote as e:
            log.info("layer for %s will be pulled normally: %s", target, e)
            if named is not None:
                self.book.layer(named[0], named[1], FALLBACK, e.reason, str(e))
            return False
        wait = min(self.remote.fetch_timeout_sec, self.resolver.timeout)
        plan = self.profiles.plan(self.resolver.client_for(layer.ref), layer) if self.profiles else None
        # The lease holds the layer from its mount until the snapshot that uses it is in the
        # store: a removal of another image's snapshot of it meanwhile cannot unmount it.
        spec = self._spec(layer.ref, layer.layer, layer.credential, plan).to_json()
        with self.layers.lease(layer.layer.digest, self._layer_mountpoint(layer.layer.digest), spec) as lease:
            try:
                # Prepare blocks containerd: the layer's TOC gets the resolver's deadline, not a fetch's.
                end = time.monotonic() + wait
                # containerd prepares layers one after another: start the following ones now, so
                # their TOCs arrive while this one (which containerd waits for) is opened.
                for other in layer.image_layers:
                    if other.digest != layer.layer.digest and is_lazy(other) and not self.layers.active(other.digest):
                        self._mount_ahead(layer.ref, other, layer.credential, plan)
                mounted = lease.wait_live(max(end - time.monotonic(), 0.01))
            except Exception as e:
                self.mount_errors += 1
                why = f"its TOC did not arrive within {wait:g}s" if "not ready after" in str(e) else str(e)
                digest = layer.layer.digest
                log.warning("lazy mount of %s of %s failed, pulling it normally: %s", digest, layer.ref, why)
                self.resolver.remember_failure(labels, f"mounting layer {digest} failed: {why}")
                self.book.layer(str(layer.ref), digest, FALLBACK, fallback.MOUNT_FAILED, why)
                return False  # the lease ends: a mount still running is undone when it ends
            size = layer.layer.annotations.get(mt.ANNOTATION_UNCOMPRESSED_SIZE, str(layer.layer.size))
            self.store.create_committed(
                target,
                parent,
                {**labels, mt.LABEL_REMOTE: "remote snapshot"},
                {
                    "digest": layer.layer.digest,
                    "mountpoint": str(lease.mountpoint),
                    "size": size,
                    "files": str(mounted.files),  # Usage's inodes: the server counts them, nothing on disk here
                    # no credentials on disk: the daemon's come from docker_config, the kubelet's from the keychain
                    "spec": json.dumps(LayerSpec.from_json(spec).public()),
                },
            )
        self.book.layer(named[0] if named else str(layer.ref), layer.layer.digest, LAZY)
        log.info(
            "layer %s of %s mounted lazily as %s in %.2fs",
            layer.layer.digest[7:19],
            layer.ref,
            target,
            time.monotonic() - t0,
        )
        return True

    def _spec(
        self, ref: object, desc: Descriptor, credential: Credential | None = None, plan: ProfilePlan | None = None
    ) -> LayerSpec:
        """The layer's spec; the kubelet's *credential* (CRI keychain) rides in it to the layer
        server's memory only (its socket is 0600; ``LayerSpec.public`` is what reaches disk);
        *plan*: the image's prefetch profile, this layer's part of it."""
        rs = self.remote
        assert rs is not None
        return LayerSpec(
            layer=desc.to_json(),
            cache_dir=str(rs.cache_dir),
            ref=str(ref),
            registry={**rs.registry, "credential": credential_to_json(credential)} if credential else rs.registry,
            prefetch=rs.prefetch,
            background_fetch=rs.background_fetch,
            fetch_timeout_sec=rs.fetch_timeout_sec,
            max_retries=rs.max_retries,
            cache_max_bytes=rs.cache_max_bytes,
            record_access=rs.record_access,
            passthrough=rs.passthrough,
            min_fetch=rs.min_fetch,
            profile=plan.layers.get(desc.digest, []) if plan else [],
            profile_budget=plan.budgets.get(desc.digest, 0) if plan else 0,
        )

    def _with_keychain(self, spec: dict[str, Any] | None) -> dict[str, Any] | None:
        """A saved (credential-free) spec with the keychain's current credential for its image,
        so a layer mounted again after a restart still uses the kubelet's credentials."""
        keychain = self.resolver.keychain if self.resolver is not None else None
        if spec is None or keychain is None or not spec.get("ref"):
            return spec
        try:
            cred = keychain.get(Reference.parse(str(spec["ref"])))
        except LazypullError:
            return spec
        if cred is None:
            return spec
        return {**spec, "registry": {**(spec.get("registry") or {}), "credential": credential_to_json(cred)}}

    def _mount_ahead(
        self, ref: object, desc: Descriptor, credential: Credential | None = None, plan: ProfilePlan | None = None
    ) -> None:
        """Mount an image's layer before its Prepare comes; held for a while (``AHEAD_TTL``),
        then released if no Prepare came for it (an interrupted pull leaves nothing)."""
        spec = self._spec(ref, desc, credential, plan).to_json()
        self.layers.lease(desc.digest, self._layer_mountpoint(desc.digest), spec, ahead=True)

    def _wait_prefetch(self, chain: builtins.list[Snapshot]) -> None:
        """Give the chain's prefetches up to ``prefetch_timeout_sec`` to finish. A layer whose
        prefetch did not finish in that time (a hung registry) is not waited for again, by this
        image or any other: a container create pays that timeout once, not at every call."""
        if self.remote is None or not self.remote.prefetch:
            return
        timed_out: dict[str, None] = self.__dict__.setdefault("_prefetch_timed_out", {})
        mps = [s.remote["mountpoint"] for s in chain if s.remote and s.remote["mountpoint"] not in timed_out]
        if not mps:
            return
        deadline = time.monotonic() + self.remote.prefetch_timeout_sec
        while True:
            try:
                rows = self.layers.client.stats(mps)["layers"]
            except FsdError:
                return
            late = [str(r.get("mountpoint")) for r in rows if not r.get("prefetch_done")]
            if not late:
                return
            if time.monotonic() >= deadline:
                log.info("prefetch of %d of %d layers not finished within the timeout; continuing", len(late), len(mps))
                for mp in late:
                    timed_out[mp] = None
                while len(timed_out) > 4096:  # the oldest go: at worst waited for once more
                    del timed_out[next(iter(timed_out))]
                return
            time.sleep(0.02)

    def restore(self) -> None:
        """After a (re)start: adopt the layers the layer server serves, remount those that died
        (never adopting a dead one), and watch their health from then on."""
        wanted: dict[str, tuple[Path, Callable[[], dict[str, Any] | None]]] = {}
        for s in self.store.all():
            if s.remote and s.remote["digest"] not in wanted:
                mp = Path(s.remote.get("mountpoint") or self._layer_mountpoint(s.remote["digest"]))
                wanted[s.remote["digest"]] = (mp, _spec_fn(self._with_keychain, s.remote))
        if wanted or self.remote is not None:
            try:
                n = self.layers.restore(wanted)
            except LazypullError as e:
                log.error("cannot reach the layer server: %s", e)
                n = 0
            log.info("restored %d lazily mounted layers", n)
        self.layers.run_health()

    def close(self) -> None:
        self.layers.close()
        self.store.close()


def _spec_fn(
    with_keychain: Callable[[dict[str, Any] | None], dict[str, Any] | None], remote: dict[str, str]
) -> Callable[[], dict[str, Any] | None]:
    """A snapshot's saved spec with the current credentials, built only if a mount needs it."""
    return lambda: with_keychain(spec_of(remote))
