"""The store's layers: found in their image, mounted by the node's layer server, counted.

The store serves no file itself: a layer's ``diff`` is the layer server's FUSE mount of it
(one serving path per node, shared with ``lazypull mount`` and the snapshotter's caching).
A layer is mounted once per digest, whichever image names it, and unmounted when its last
user releases it (see :mod:`lazypull.store` for how containers/storage counts). The counts
are kept in ``STATE/uses.json``: a restarted store leaves the layers mounted (containers run
on them) and carries on counting where it stopped.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lazypull.errors import LazypullError
from lazypull.format.soci.dispatch import is_lazy
from lazypull.fs.fsdclient import FsdClient, FsdError
from lazypull.imagefs.rootfs import MountOptions, layer_spec
from lazypull.oci.resolve import select_manifest
from lazypull.oci.types import Descriptor, ImageConfig, Manifest
from lazypull.registry.options import RegistryOptions
from lazypull.registry.repository import RegistryStore
from lazypull.soci.find import soci_layers
from lazypull.store.info import layer_info

log = logging.getLogger(__name__)

IMAGE_TTL = 60.0  # seconds a resolved image (its lazy layers) is reused: a pull stats each layer thrice


@dataclass
class StoreLayer:
    digest: str
    desc: Descriptor
    info: bytes
    mountpoint: Path
    store: RegistryStore
    uses: int = 0  # lookups and graph-root layers not yet released ("use" created, no rmdir yet)
    mounted: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class StoreLayers:
    def __init__(self, client: FsdClient, state: Path, opts: MountOptions, ropts: RegistryOptions) -> None:
        self.client = client
        self.state = state
        self.opts = opts
        self.ropts = ropts
        self._images: dict[str, tuple[float, dict[str, tuple[Descriptor, bytes, RegistryStore]]]] = {}
        self._layers: dict[str, StoreLayer] = {}
        self._lock = threading.Lock()
        self._uses_file = state / "uses.json"
        try:
            self._saved: dict[str, int] = {str(k): int(v) for k, v in json.loads(self._uses_file.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            self._saved = {}

    def lazy_layers(self, ref: str) -> dict[str, tuple[Descriptor, bytes, RegistryStore]]:
        """*ref*'s layers that can be served lazily, by digest, with their info (cached briefly)."""
        now = time.monotonic()
        hit = self._images.get(ref)
        if hit is not None and now - hit[0] < IMAGE_TTL:
            return hit[1]
        found: dict[str, tuple[Descriptor, bytes, RegistryStore]] = {}
        try:
            store = RegistryStore.open(ref, self.ropts)
            subject = select_manifest(store, store.resolve(), None)
            manifest = Manifest.parse(store.fetch(subject), subject.media_type)
            diff_ids = ImageConfig.parse(store.fetch(manifest.config)).diff_ids
            for desc, diff_id in zip(soci_layers(store, manifest), diff_ids, strict=True):
                if is_lazy(desc):
                    found[desc.digest] = (desc, layer_info(desc, diff_id), store)
        except (LazypullError, ValueError, OSError) as e:
            log.warning("store: %s cannot be resolved: %s", ref, e)
        self._images[ref] = (now, found)
        return found

    def get(self, ref: str, digest: str) -> StoreLayer:
        """The layer, mounted; OSError(ENOENT) if *ref* has no such lazy layer."""
        with self._lock:
            layer = self._layers.get(digest)
        if layer is not None and layer.mounted:
            return layer
        item = self.lazy_layers(ref).get(digest)
        if item is None:
            raise OSError(errno.ENOENT, digest)
        desc, info, store = item
        with self._lock:
            layer = self._layers.get(digest)
            if layer is None:
                mp = self.state / "layers" / digest.removeprefix("sha256:") / "fs"
                layer = self._layers[digest] = StoreLayer(digest, desc, info, mp, store, self._saved.get(digest, 0))
        with layer.lock:
            if not layer.mounted:
                layer.mountpoint.mkdir(parents=True, exist_ok=True, mode=0o755)
                spec = layer_spec(store, desc, self.opts, self.ropts)
                try:
                    _summary, fd = self.client.mount(spec.to_json(), layer.mountpoint, self.opts.fetch_timeout_sec + 30)
                except FsdError as e:
                    log.warning("store: layer %s of %s cannot be mounted: %s", digest, ref, e)
                    with self._lock:
                        self._layers.pop(digest, None)
                    raise OSError(errno.ENOENT, digest) from None
                if fd >= 0:
                    os.close(fd)  # the layer server keeps the connection
                layer.mounted = True
                log.info("store: layer %s of %s mounted at %s", digest, ref, layer.mountpoint)
        return layer

    def find(self, digest: str) -> StoreLayer | None:
        with self._lock:
            return self._layers.get(digest)

    def use(self, layer: StoreLayer) -> None:
        with layer.lock:
            layer.uses += 1
            log.info("store: layer %s used (%d)", layer.digest, layer.uses)
            self._save(layer)

    def release(self, layer: StoreLayer) -> None:
        """One use less; the last release unmounts the layer."""
        with layer.lock:
            layer.uses = max(0, layer.uses - 1)
            log.info("store: layer %s released (%d)", layer.digest, layer.uses)
            self._save(layer)
            if layer.uses:
                return
            with self._lock:
                if self._layers.get(layer.digest) is layer:
                    del self._layers[layer.digest]
            try:
                self.client.unmount(layer.mountpoint)
                log.info("store: layer %s released and unmounted", layer.digest)
            except FsdError as e:
                log.warning("store: unmounting layer %s: %s", layer.digest, e)

    def in_use(self) -> dict[str, int]:
        """Digest -> users of every layer mounted now."""
        with self._lock:
            return {d: x.uses for d, x in self._layers.items()}

    def _save(self, layer: StoreLayer) -> None:
        with self._lock:
            if layer.uses:
                self._saved[layer.digest] = layer.uses
            else:
                self._saved.pop(layer.digest, None)
            tmp = self._uses_file.with_suffix(".tmp")
            self.state.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._saved))
            os.replace(tmp, self._uses_file)
