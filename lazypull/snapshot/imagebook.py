"""What the daemon saw happen to each image and pod since it started, for ``lazypull status``.

The snapshot store knows which layers are mounted lazily, but not why another layer was
pulled in full, which pod asked for an image or what became of its prefetch hint: those
are events, seen once (a Prepare, a ``PullImage``). They are written down here, in
memory and bounded (the oldest images and pods are forgotten first), so a node can say
per image and pod what it did and why. Nothing here is a secret: references, digests,
fallback reasons, pod names.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from lazypull.errors import LazypullError
from lazypull.registry.reference import Reference

MAX_IMAGES = 512
MAX_PODS = 512
MAX_LAYERS = 256  # per image (a manifest has at most a few hundred)
MAX_DETAIL = 300  # characters of a fallback's message kept

LAZY = "lazy"
FALLBACK = "fallback"


def image_name(ref: str) -> str:
    """One spelling per image: the CRI label's and the kubelet's ``PullImage`` may differ."""
    try:
        return str(Reference.parse(ref))
    except LazypullError:
        return ref


@dataclass
class LayerRecord:
    digest: str
    mode: str  # LAZY or FALLBACK
    reason: str = ""  # the fallback's label (lazypull.snapshot.fallback)
    detail: str = ""  # its message (what the log said)
    at: float = field(default_factory=time.time)


@dataclass
class PodRecord:
    namespace: str
    name: str
    uid: str
    images: list[str] = field(default_factory=list)
    hint: str = "none"  # none | malformed | running | done | partial | failed
    hint_detail: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        return self.uid or f"{self.namespace}/{self.name}"


@dataclass
class ImageRecord:
    ref: str
    prepared_at: float | None = None  # wall clock of its first Prepare since the daemon started
    first_read_seconds: float | None = None  # from that Prepare to the first read of one of its layers
    layers: dict[str, LayerRecord] = field(default_factory=dict)
    pods: list[str] = field(default_factory=list)  # PodRecord keys


class ImageBook:
    """Images and pods, most recently touched last (thread-safe; copies go out)."""

    def __init__(self, max_images: int = MAX_IMAGES, max_pods: int = MAX_PODS) -> None:
        self.max_images = max_images
        self.max_pods = max_pods
        self._images: OrderedDict[str, ImageRecord] = OrderedDict()
        self._pods: OrderedDict[str, PodRecord] = OrderedDict()
        self._lock = threading.Lock()

    def _image(self, ref: str) -> ImageRecord:
        name = image_name(ref)
        rec = self._images.pop(name, None) or ImageRecord(name)
        self._images[name] = rec
        while len(self._images) > self.max_images:
            self._images.popitem(last=False)
        return rec

    def prepared(self, ref: str) -> None:
        """containerd prepares a layer of *ref*: the image's clock starts at its first Prepare."""
        with self._lock:
            rec = self._image(ref)
            if rec.prepared_at is None:
                rec.prepared_at = time.time()

    def layer(self, ref: str, digest: str, mode: str, reason: str = "", detail: str = "") -> None:
        """A layer of *ref* is mounted lazily, or (with the fallback's *reason*) pulled in full."""
        with self._lock:
            rec = self._image(ref)
            rec.layers.pop(digest, None)
            rec.layers[digest] = LayerRecord(digest, mode, reason, detail[:MAX_DETAIL])
            while len(rec.layers) > MAX_LAYERS:
                rec.layers.pop(next(iter(rec.layers)))

    def first_read(self, ref: str, seconds: float) -> bool:
        """Note the image's time to its first read; False if it was known already."""
        with self._lock:
            rec = self._images.get(image_name(ref))
            if rec is None or rec.first_read_seconds is not None:
                return False
            rec.first_read_seconds = seconds
            return True

    def pod_pull(self, image: str, namespace: str, name: str, uid: str) -> str:
        """A pod's ``PullImage`` of *image*; returns the pod's key."""
        with self._lock:
            pod = PodRecord(namespace, name, uid)
            old = self._pods.pop(pod.key, None)
            if old is not None:
                pod = old
            self._pods[pod.key] = pod
            while len(self._pods) > self.max_pods:
                self._pods.popitem(last=False)
            img = self._image(image)
            if img.ref not in pod.images:
                pod.images.append(img.ref)
            if pod.key not in img.pods:
                img.pods.append(pod.key)
            return pod.key

    def hint(self, pod_key: str, state: str, **detail: Any) -> None:
        """The state of a pod's prefetch hint (see :class:`PodRecord`)."""
        with self._lock:
            pod = self._pods.get(pod_key)
            if pod is not None:
                pod.hint, pod.hint_detail = state, dict(detail)

    def images(self) -> list[ImageRecord]:
        with self._lock:
            return [replace(r, layers=dict(r.layers), pods=list(r.pods)) for r in self._images.values()]

    def pods(self) -> list[PodRecord]:
        with self._lock:
            return [replace(p, images=list(p.images), hint_detail=dict(p.hint_detail)) for p in self._pods.values()]
