"""Rotated credentials handed to the layers already being served.

A layer keeps reading its blob for as long as it is mounted, often far longer than a
credential provider's credentials live (registry tokens of a few hours). Every interval the
daemon asks its credential sources again for the image of each served layer that was
mounted with an explicit credential (answers are cached, so this runs a plugin only once
its answer expired); when the answer differs, the layer server's open layer takes the new
one in place (``renew``: memory to memory, never a new mount). Layers mounted with the
node's docker config or anonymously are left alone.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from lazypull.errors import LazypullError
from lazypull.fs.fsdclient import FsdError
from lazypull.registry.options import credential_to_json
from lazypull.registry.reference import Reference
from lazypull.snapshot.layers import RemoteLayers
from lazypull.snapshot.remote import CredentialSource

log = logging.getLogger(__name__)


def renew_once(layers: RemoteLayers, source: CredentialSource) -> int:
    """Hand each served layer whose credential changed the new one; how many took it."""
    renewed = 0
    for e, _mounted in list(layers.lifecycle.serving()):
        spec: dict[str, Any] = e.spec
        registry = spec.get("registry") or {}
        if not spec.get("ref") or not registry.get("credential"):
            continue
        try:
            cred = source.get(Reference.parse(str(spec["ref"])))
        except LazypullError:
            continue
        if cred is None:
            continue
        wanted = credential_to_json(cred)
        if registry["credential"] == wanted:
            continue
        new = {**spec, "registry": {**registry, "credential": wanted}}
        try:
            ok = layers.client.renew(new, e.mountpoint)
        except FsdError as err:
            log.warning("cannot hand rotated credentials to the layer server: %s", err)
            return renewed
        if ok:
            with e.cond:
                if e.spec is spec:
                    e.spec = new  # also what a new layer server is handed, should this one die
            renewed += 1
            log.info("layer %s of %s reads with rotated credentials from now on", e.digest[7:19], spec["ref"])
    return renewed


def start_renewal(layers: RemoteLayers, source: CredentialSource, interval: float) -> threading.Event:
    """Run :func:`renew_once` every *interval* seconds until the returned event is set."""
    stop = threading.Event()
    ref = weakref.ref(layers)

    def run() -> None:
        while not stop.wait(interval):
            ly = ref()
            if ly is None:
                return
            try:
                renew_once(ly, source)
            except Exception:  # a renewal pass must never end the loop
                log.exception("credential renewal pass failed")
            del ly

    threading.Thread(target=run, name="credential-renewal", daemon=True).start()
    return stop
