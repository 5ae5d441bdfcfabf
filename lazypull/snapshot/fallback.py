"""Layers pulled in full instead of mounted lazily, counted by reason.

A fallback is not an error (the container still starts) but it costs the whole layer's
download; operators see it in ``lazypull_fallback_total{reason=...}`` next to the log
line, so a misconfigured registry (plain HTTP, CA, credentials) shows as a rising series.
Which image and layer fell back, and why, is remembered per image for ``lazypull status``
(:mod:`lazypull.snapshot.imagebook`).

``lazypull_fallback_layers_total`` is the same count under its earlier name, kept so
existing dashboards and alerts keep working; new ones should use ``lazypull_fallback_total``.
"""

from __future__ import annotations

from prometheus_client import Counter

from lazypull.errors import LazypullError, RegistryError

FALLBACKS = Counter("lazypull_fallback", "Layers pulled in full instead of mounted lazily, by reason", ["reason"])
FALLBACK_LAYERS = Counter(
    "lazypull_fallback_layers", "Layers pulled in full instead of mounted lazily, by reason (old name)", ["reason"]
)

# Labels (a small fixed set: the message, with the reference, goes to the log).
NO_LABELS = "no_labels"  # pulled without a lazy-pull client (no image/layer labels)
BAD_LABELS = "bad_labels"  # malformed reference or digest in the labels
NOT_LAZY = "not_lazy"  # neither eStargz/zstd:chunked nor indexed by a SOCI zTOC
NOT_IN_MANIFEST = "not_in_manifest"
PLAIN_HTTP = "plain_http"  # the registry speaks plain HTTP, not in plain_http_hosts
TLS = "tls"  # certificate not trusted, handshake failed
AUTH = "auth"  # credentials missing or refused
NOT_FOUND = "not_found"
TIMEOUT = "timeout"  # the registry did not answer within the resolver's deadline
UNREACHABLE = "unreachable"  # connection failures, retries exhausted
REGISTRY = "registry"  # any other registry answer
MOUNT_FAILED = "mount_failed"  # resolved, but the layer's mount (its TOC) failed
REASONS = (NO_LABELS, BAD_LABELS, NOT_LAZY, NOT_IN_MANIFEST, PLAIN_HTTP, TLS, AUTH, NOT_FOUND, TIMEOUT,
           UNREACHABLE, REGISTRY, MOUNT_FAILED)
for _r in REASONS:  # every series exists from the start (0), so rate() and alerts see the first one
    FALLBACKS.labels(reason=_r)
    FALLBACK_LAYERS.labels(reason=_r)


def count_fallback(reason: str) -> None:
    """One layer falls back to a normal pull because of *reason* (one of :data:`REASONS`).

    :mod:`lazypull.snapshot.remote` counts the resolver's fallbacks (``LayerResolver.resolve``)
    and failed mounts (``LayerResolver.remember_failure``, which the snapshotter calls)."""
    label = reason if reason in REASONS else REGISTRY
    FALLBACKS.labels(reason=label).inc()
    FALLBACK_LAYERS.labels(reason=label).inc()


def reason_of(err: BaseException) -> str:
    """The label for a registry failure that made an image fall back."""
    from lazypull.registry.client import NotFoundError
    from lazypull.registry.transport import DeadlineExceeded, PlainHTTPRegistry, TransportError

    text = str(err)
    if isinstance(err, PlainHTTPRegistry):
        return PLAIN_HTTP
    if isinstance(err, DeadlineExceeded):
        return TIMEOUT
    if isinstance(err, TransportError):
        return TLS if text.startswith("TLS verification failed") else UNREACHABLE
    if isinstance(err, NotFoundError):
        return NOT_FOUND
    if isinstance(err, RegistryError) and ("credentials" in text or "access denied" in text):
        return AUTH
    return REGISTRY if isinstance(err, LazypullError) else UNREACHABLE
