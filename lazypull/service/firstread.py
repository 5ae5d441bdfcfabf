"""How long a starting container waited for its first byte: per image and per layer.

The layer server notes each layer's first read (when it began, how long it took); the
daemon knows when containerd first prepared each image. Both are joined here whenever the
layer server's stats are read (a scrape, ``lazypull status``), and each image and each
mount is observed once: the histograms carry no image or layer label, so their series
stay few however many images a node runs (``lazypull status`` shows the values per image).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import Histogram

from lazypull.snapshot.imagebook import LAZY, ImageBook

IMAGE_FIRST_READ = Histogram(
    "lazypull_image_first_read_seconds",
    "Time from an image's first Prepare to the first read of one of its lazily mounted layers",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
LAYER_FIRST_READ = Histogram(
    "lazypull_layer_first_read_seconds",
    "Latency of each lazily mounted layer's first read (cold: it usually fetches from the registry)",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
MAX_SEEN = 8192  # mount instances remembered as observed (the oldest forgotten first)


class FirstReads:
    def __init__(self) -> None:
        self._seen: dict[str, None] = {}  # mount ids whose first read was observed
        self._lock = threading.Lock()

    def update(self, book: ImageBook, rows: Iterable[dict[str, Any]]) -> None:
        """Observe the first reads not observed yet, from the layer server's stats *rows*."""
        starts: dict[str, float] = {}  # layer digest -> wall clock of its first read
        for row in rows:
            first = row.get("first_read")
            if not first:
                continue
            start, took = float(first[0]), float(first[1])
            digest = str(row.get("layer", ""))
            starts[digest] = min(start, starts.get(digest, start))
            mid = str(row.get("mount_id", "")) or digest
            with self._lock:
                if mid in self._seen:
                    continue
                self._seen[mid] = None
                while len(self._seen) > MAX_SEEN:
                    del self._seen[next(iter(self._seen))]
            LAYER_FIRST_READ.observe(took)
        for img in book.images():
            if img.prepared_at is None or img.first_read_seconds is not None:
                continue
            # A layer shared with an image read before this one was prepared tells nothing about this one.
            reads = [
                starts[d] for d, rec in img.layers.items() if rec.mode == LAZY and starts.get(d, 0) >= img.prepared_at
            ]
            if reads and book.first_read(img.ref, min(reads) - img.prepared_at):
                IMAGE_FIRST_READ.observe(min(reads) - img.prepared_at)


FIRST_READS = FirstReads()  # the daemon's: shared by the metrics collector and the status endpoint
