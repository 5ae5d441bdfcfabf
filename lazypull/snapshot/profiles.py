"""An image's prefetch profile, looked up on its first Prepare and turned into each lazy
layer's plan: what to fetch, in first-access order, ahead of the background fetch.

One lookup per image (its manifest digest): the referrers of the image, the newest few
profiles among them, all within one short deadline; the answer, a plan or none, is kept.
A profile comes from the registry and is only a hint: one that is malformed, too big, for
another image or naming none of its layers is ignored and logged once; files a layer
lacks are skipped by the layer server; what lies beyond the byte budget (content bytes,
in first-access order across the image's layers) is cut.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from prometheus_client import Counter

from lazypull.errors import DigestMismatchError, LazypullError, OCIError
from lazypull.format.soci.dispatch import is_lazy
from lazypull.prefetch.plan import ProfilePlan, plan_for
from lazypull.prefetch.profile import ProfileError
from lazypull.prefetch.publish import published_profile
from lazypull.registry.client import RegistryClient
from lazypull.registry.deadline import deadline_scope
from lazypull.snapshot.remote import RemoteLayer

log = logging.getLogger(__name__)

LOOKUPS = Counter(
    "lazypull_prefetch_profile_images", "Images whose prefetch profile was looked up, by result", ["result"]
)  # result: absent, found (and applied), ignored (malformed, another image's, no layer of the image), failed
for _r in ("absent", "found", "applied", "ignored", "failed"):
    LOOKUPS.labels(_r)
MAX_IMAGES = 1024  # lookups remembered


class ProfileLookup:
    def __init__(self, budget: int, timeout: float) -> None:
        self.budget = budget
        self.timeout = timeout
        self._plans: OrderedDict[str, ProfilePlan | None] = OrderedDict()  # manifest digest -> plan
        self._pending: dict[str, threading.Event] = {}  # lookups under way
        self._lock = threading.Lock()

    def plan(self, client: RegistryClient, layer: RemoteLayer) -> ProfilePlan | None:
        """The plan for *layer*'s image (looked up on its first call; never raises)."""
        subject = layer.manifest_digest
        if not subject or self.budget <= 0:
            return None
        with self._lock:  # one lookup per image, however many of its layers are prepared at once
            if subject in self._plans:
                self._plans.move_to_end(subject)
                return self._plans[subject]
            pending = self._pending.get(subject)
            if pending is None:
                self._pending[subject] = threading.Event()
        if pending is not None:
            pending.wait(self.timeout + 1)
            with self._lock:
                return self._plans.get(subject)
        plan = None
        try:
            plan = self._lookup(client, layer, subject)
        finally:
            with self._lock:
                self._plans[subject] = plan
                while len(self._plans) > MAX_IMAGES:
                    self._plans.popitem(last=False)
                self._pending.pop(subject).set()
        return plan

    def _lookup(self, client: RegistryClient, layer: RemoteLayer, subject: str) -> ProfilePlan | None:
        ref = layer.ref
        try:
            with deadline_scope(self.timeout):
                profile = published_profile(client, ref, subject)
            if profile is None:
                LOOKUPS.labels("absent").inc()
                return None
        except LazypullError as e:  # a bad profile is ignored; a registry that did not answer, failed
            result = "ignored" if isinstance(e, (ProfileError, DigestMismatchError, OCIError)) else "failed"
            LOOKUPS.labels(result).inc()
            log.warning("prefetch profile of %s (%s) %s: %s", ref, subject, result, e)
            return None
        LOOKUPS.labels("found").inc()
        lazy = [d.digest for d in layer.image_layers if is_lazy(d)]
        plan = plan_for(profile, lazy, self.budget)
        if not plan.layers:
            LOOKUPS.labels("ignored").inc()
            log.warning("prefetch profile of %s (%s) ignored: it names none of its lazy layers", ref, subject)
            return None
        LOOKUPS.labels("applied").inc()
        log.info(
            "prefetch profile of %s: %d files in %d layers%s",
            ref,
            plan.files,
            len(plan.layers),
            f" ({plan.cut} beyond the {self.budget} byte budget left out)" if plan.cut else "",
        )
        return plan
