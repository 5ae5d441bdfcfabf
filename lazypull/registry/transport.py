"""HTTP for registries: pooled connections, timeouts, retries with backoff, auth retry.

Only idempotent requests (GET, HEAD) are retried on connection errors, truncated
bodies, 5xx and 429; the total time spent on one request is bounded.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import SSLError

from lazypull.errors import RegistryError
from lazypull.registry.hosts import Endpoint

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
IDEMPOTENT = frozenset({"GET", "HEAD"})
USER_AGENT = "lazypull/0.1"


class TransportError(RegistryError):
    """The request could not be completed (network failure or retries exhausted)."""


class Transport:
    def __init__(
        self,
        *,
        max_retries: int = 4,
        backoff: float = 0.2,
        max_backoff: float = 3.0,
        total_timeout: float = 120.0,
        pool_size: int = 16,
    ) -> None:
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.total_timeout = total_timeout
        self.pool_size = pool_size
        self._pools: dict[tuple[str | None, bool], urllib3.PoolManager] = {}
        self._lock = threading.Lock()

    def pool(self, ca: str | None = None, skip_verify: bool = False) -> urllib3.PoolManager:
        key = (ca, skip_verify)
        with self._lock:
            pm = self._pools.get(key)
            if pm is None:
                kw: dict[str, Any] = {"maxsize": self.pool_size, "block": False, "retries": False}
                if skip_verify:
                    kw["cert_reqs"] = "CERT_NONE"
                    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
                elif ca:
                    kw["ca_certs"] = ca
                pm = self._pools[key] = urllib3.PoolManager(**kw)
            return pm

    def raw_request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        fields: dict[str, str] | None = None,
        encode_body: bool = False,
        endpoint: Endpoint | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """One request with retries but no registry auth (token services, redirects)."""
        pm = self.pool(endpoint.ca if endpoint else None, endpoint.skip_verify if endpoint else False)
        hdrs = {"User-Agent": USER_AGENT, **(headers or {})}

        def once() -> urllib3.BaseHTTPResponse:
            if encode_body:
                return pm.request_encode_body(
                    method,
                    url,
                    fields=fields,
                    headers=hdrs,
                    encode_multipart=False,
                    timeout=urllib3.Timeout(connect=10, read=30),
                )
            return pm.request(method, url, fields=fields, headers=hdrs, timeout=urllib3.Timeout(connect=10, read=30))

        return self.with_retries(once, method, url)

    def with_retries(
        self, fn: Callable[[], urllib3.BaseHTTPResponse], method: str, what: str, deadline: float | None = None
    ) -> urllib3.BaseHTTPResponse:
        """Run *fn*, retrying transient failures of idempotent requests with jittered backoff."""
        deadline = deadline or time.monotonic() + self.total_timeout
        attempt = 0
        while True:
            err: str
            try:
                resp = fn()
                if resp.status not in RETRY_STATUSES or method not in IDEMPOTENT:
                    return resp
                err = f"HTTP {resp.status}"
                retry_after = resp.headers.get("Retry-After")
                resp.release_conn()
            except (Urllib3Error, OSError) as e:
                reason = getattr(e, "reason", None)
                if isinstance(e, SSLError) or isinstance(reason, SSLError):
                    raise TransportError(
                        f"TLS verification failed for {_safe(what)}: {reason or e}; configure the "
                        "registry's CA (ca = ... in --registry-config) or use --insecure"
                    ) from None
                if method not in IDEMPOTENT:
                    raise TransportError(f"{method} {_safe(what)} failed: {type(e).__name__}") from None
                err, retry_after = type(e).__name__, None
            attempt += 1
            delay = min(self.max_backoff, self.backoff * (2 ** (attempt - 1))) * (0.5 + random.random() / 2)
            if retry_after and retry_after.isdigit():
                delay = max(delay, min(float(retry_after), self.max_backoff))
            if attempt > self.max_retries or time.monotonic() + delay > deadline:
                raise TransportError(f"{method} {_safe(what)} failed after {attempt} attempts: {err}")
            log.debug("retrying %s %s after %s (attempt %d)", method, _safe(what), err, attempt)
            time.sleep(delay)


def _safe(url: str) -> str:
    """A URL without query strings (signed redirect URLs carry secrets there)."""
    return url.split("?", 1)[0]
