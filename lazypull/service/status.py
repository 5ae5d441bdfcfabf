"""The node's account of itself: per image and pod sandbox, what was mounted lazily, what
fell back and why, how each layer is doing — the model ``lazypull status`` prints.

Built on request from what the daemon already holds: the image book (events: fallbacks,
pods, hints), the snapshot store (lazy layers, also those from before a restart), the
lifecycle and health of each layer, and the layer server's ``Stats`` (bytes, first read).
Credentials appear only as where they came from, never as values.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lazypull import __version__
from lazypull.errors import LazypullError
from lazypull.registry.credentials import _docker_config_path, _host_keys
from lazypull.registry.reference import Reference
from lazypull.service.firstread import FIRST_READS
from lazypull.snapshot.imagebook import FALLBACK, LAZY, ImageRecord, LayerRecord, image_name
from lazypull.snapshot.layers import spec_of

if TYPE_CHECKING:
    from lazypull.snapshot.snapshotter import Snapshotter

SCHEMA = 1
STARTED = time.time()


def node_status(sn: Snapshotter) -> dict[str, Any]:
    server = sn.layers.server_stats()
    rows = list(server.get("layers") or [])
    FIRST_READS.update(sn.book, rows)
    by_digest = {str(r.get("layer", "")): r for r in rows}
    health = dict(sn.layers.health())
    images = {r.ref: r for r in sn.book.images()}
    for s in sn.store.all():  # lazy layers the book has not seen (mounted before a restart)
        if not s.remote:
            continue
        ref = str((spec_of(s.remote) or {}).get("ref") or "")
        if not ref:
            continue
        rec = images.setdefault(image_name(ref), ImageRecord(image_name(ref)))
        rec.layers.setdefault(s.remote["digest"], LayerRecord(s.remote["digest"], LAZY, at=0.0))
    pods = sn.book.pods()
    pod_names = {p.key: f"{p.namespace}/{p.name}" for p in pods}
    for rec in images.values():
        rec.pods = [pod_names.get(k, k) for k in rec.pods]
    creds = _CredentialSources(sn)
    record_access = bool(sn.remote and sn.remote.record_access)
    out_images = [
        _image(rec, by_digest, health, sn, creds(rec.ref), record_access) for rec in images.values() if rec.layers
    ]
    out_pods = [
        {
            "namespace": p.namespace,
            "name": p.name,
            "uid": p.uid,
            "images": p.images,
            "hint": {"state": p.hint, **p.hint_detail},
            "pulled_at": p.at,
        }
        for p in pods
    ]
    return {
        "schema": SCHEMA,
        "version": __version__,
        "daemon": {"pid": os.getpid(), "root": str(sn.root), "started": STARTED},
        "layer_server": {
            "up": sn.layers.server_up,
            "pid": sn.layers.server_pid,
            "restarts": sn.layers.server_restarts,
            "index_memory": server.get("index_memory") or {},  # budget, in_use, peak, waiting, refused
        },
        "images": out_images,
        "pods": out_pods,
    }


def _image(
    rec: ImageRecord,
    rows: dict[str, dict[str, Any]],
    health: dict[str, bool],
    sn: Snapshotter,
    credentials: str,
    record_access: bool,
) -> dict[str, Any]:
    layers = [_layer(lr, rows.get(d), health.get(d), sn) for d, lr in rec.layers.items()]
    modes = {lr.mode for lr in rec.layers.values()}
    mode = modes.pop() if len(modes) == 1 else "mixed"
    return {
        "ref": rec.ref,
        "mode": mode,
        "reasons": sorted({lr.reason for lr in rec.layers.values() if lr.mode == FALLBACK}),
        "credentials": credentials,
        "prepared_at": rec.prepared_at,
        "first_read_seconds": rec.first_read_seconds,
        "size_bytes": sum(int(x.get("size") or 0) for x in layers if x["mode"] == LAZY),
        "fetched_bytes": sum(int(x.get("fetched_bytes") or 0) for x in layers),
        "prefetched_bytes": sum(int(x.get("prefetched_bytes") or 0) for x in layers),
        "profile": "recording" if record_access and LAZY in {x["mode"] for x in layers} else None,
        # what its published prefetch profile fetched (content bytes) and how much of it was read
        "profile_prefetched_bytes": sum(int(x.get("profile_prefetched_bytes") or 0) for x in layers),
        "profile_read_bytes": sum(int(x.get("profile_read_bytes") or 0) for x in layers),
        "pods": rec.pods,
        "layers": layers,
    }


def _layer(lr: LayerRecord, row: dict[str, Any] | None, healthy: bool | None, sn: Snapshotter) -> dict[str, Any]:
    out: dict[str, Any] = {"digest": lr.digest, "mode": lr.mode}
    if lr.mode == FALLBACK:
        out.update(reason=lr.reason, detail=lr.detail, state="pulled-in-full")
        return out
    e = sn.layers.lifecycle.get(lr.digest)
    out["state"] = e.state.value if e is not None else "absent"
    out["healthy"] = healthy
    if e is not None and e.error:
        out["error"] = e.error
    if row is not None:
        first = row.get("first_read")
        out.update(
            server_state=row.get("state"),
            size=int(row.get("size") or 0),
            fetched_bytes=int(row.get("fetched_bytes") or 0),
            prefetched_bytes=int(row.get("prefetched_bytes") or 0),
            background_bytes=int(row.get("background_bytes") or 0),
            profile_prefetched_bytes=int(row.get("profile_chunk_bytes") or 0),
            profile_read_bytes=int(row.get("profile_read_bytes") or 0),
            served_bytes=int(row.get("bytes_served") or 0),
            prefetch_done=bool(row.get("prefetch_done")),
            index=row.get("index"),
            first_read_latency_seconds=float(first[1]) if first else None,
        )
    return out


class _CredentialSources:
    """Where an image's registry credentials come from: the keychain's word (``cri``,
    ``keyring-restored``, a provider's name), else the node's own (``static``,
    ``docker-config``), else ``anonymous``. The docker config is only looked at, never
    asked (no credential helper runs for a status)."""

    def __init__(self, sn: Snapshotter) -> None:
        self.resolver = sn.resolver
        self._hosts: dict[str, bool] = {}

    def __call__(self, ref: str) -> str:
        if self.resolver is None:
            return "anonymous"
        keychain = self.resolver.keychain
        source = getattr(keychain, "source", None)
        found = source(ref) if source is not None else None
        if found:
            return str(found)
        opts = self.resolver.client.opts
        if opts.user or opts.credential is not None:
            return "static"
        try:
            registry = Reference.parse(ref).registry
        except LazypullError:
            return "anonymous"
        if registry not in self._hosts:
            self._hosts[registry] = _in_docker_config(registry, opts.docker_config)
        return "docker-config" if self._hosts[registry] else "anonymous"


def _in_docker_config(registry: str, docker_config: Path | None) -> bool:
    try:
        cfg = json.loads(_docker_config_path(docker_config).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(cfg, dict):
        return False
    keys = _host_keys(registry)
    helpers, auths = cfg.get("credHelpers") or {}, cfg.get("auths") or {}
    return bool(cfg.get("credsStore")) or any(k in helpers or k in auths for k in keys)
