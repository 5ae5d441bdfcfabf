"""``open_image(..., prefetch=True)``: the image's published prefetch profile, fetched into
the chunk cache by a background thread while the caller reads.

Only images in a registry have profiles (they are OCI referrers). A profile that is absent,
malformed or another image's changes nothing but a log line: reads fetch what they need.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from lazypull.errors import LazypullError
from lazypull.format.soci.dispatch import is_lazy
from lazypull.imagefs.layers import IndexedLayer, LayerView
from lazypull.oci.types import Descriptor
from lazypull.prefetch.plan import ProfilePlan, plan_for

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 256 << 20


class ProfilePrefetch:
    """Looks the profile up and fetches it, layer by layer in first-access order."""

    def __init__(
        self,
        store: object,
        subject: Descriptor,
        layers: list[Descriptor],
        layer: Callable[[int], LayerView],
        budget: int,
    ) -> None:
        """*layers*: the image's, bottom first; *layer* opens the view of one (by position)."""
        self.store = store
        self.subject = subject
        self.layers = layers
        self.layer = layer
        self.budget = budget
        self.plan: ProfilePlan | None = None
        self.bytes_fetched = 0
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="profile-prefetch", daemon=True)

    def start(self) -> ProfilePrefetch:
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """True once the prefetch is over (done, cut, or nothing to do)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        self.stop.set()
        self._thread.join()

    def _run(self) -> None:
        # Here, not at the top: opening a local layout loads no registry client.
        from lazypull.prefetch.publish import published_profile
        from lazypull.registry.repository import RegistryStore

        if not isinstance(self.store, RegistryStore):
            return
        try:
            profile = published_profile(self.store.client, self.store.ref, self.subject.digest)
        except LazypullError as e:
            log.warning("%s: prefetch profile not applied: %s", self.store.name, e)
            return
        if profile is None:
            return
        # Layers read whole (no index) are never opened for a profile: that would download them.
        self.plan = plan_for(profile, [d.digest for d in self.layers if is_lazy(d)], self.budget)
        position = {d.digest: i for i, d in enumerate(self.layers)}
        for digest in self.plan.layers:  # by the time of each layer's first access
            if self.stop.is_set():
                return
            try:
                view = self.layer(position[digest])
                if isinstance(view, IndexedLayer):
                    entries = [(str(p), [(int(o), int(n)) for o, n in r]) for p, r in self.plan.layers[digest]]
                    self.bytes_fetched += view.fetcher.profile_fetch(entries, self.plan.budgets[digest], self.stop)
            except LazypullError as e:
                log.warning("%s: layer %s: prefetch profile not applied: %s", self.store.name, digest, e)
