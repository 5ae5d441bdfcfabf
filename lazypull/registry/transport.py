"""HTTP for registries: pooled connections, timeouts, retries with backoff, auth retry.

Only idempotent requests (GET, HEAD) are retried on connection errors, truncated
bodies, 5xx and 429. One request, with all its retries, has one deadline (the
enclosing :func:`deadline_scope`'s, else ``total_timeout``); every attempt's connect and
read timeouts are capped by the time left, and in an enforced scope a stalled or
trickling body is cut off when the deadline passes (see ``deadline.py``).

A pooled keep-alive connection the peer dropped silently (a NAT or load balancer
forgot it) would otherwise cost a whole read timeout: a reused connection must start
answering within ``stale_after`` seconds, else the idle connections to that host are
dropped and the request is sent again at once on a fresh one.
"""

from __future__ import annotations

import email.utils
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError, ProtocolError, SSLError
from urllib3.util.wait import wait_for_read

from lazypull.errors import RegistryError
from lazypull.registry import deadline as dl
from lazypull.registry import plainhttp
from lazypull.registry.endpoint import Endpoint

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
IDEMPOTENT = frozenset({"GET", "HEAD"})
USER_AGENT = "lazypull/0.1"


STALE_AFTER = 2.0  # seconds a reused keep-alive connection may stay silent before it is presumed dead
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0


class TransportError(RegistryError):
    """The request could not be completed (network failure or retries exhausted)."""


class PlainHTTPRegistry(TransportError):
    """The registry speaks plain HTTP and was asked for HTTPS (the message says the fix)."""

    def __init__(self, host: str) -> None:
        super().__init__(plainhttp.hint(host))
        self.host = host


class DeadlineExceeded(TransportError):
    """The request's deadline passed (a stalled or trickling registry)."""


class Throttled(TransportError):
    """The host answered 429/503 asking to wait longer than the deadline leaves."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` in seconds from now (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class StaleConnectionError(OSError):
    """A reused keep-alive connection did not start answering: the peer dropped it."""


class _Watched:
    """Connection behaviour shared by HTTP and HTTPS: deadline scopes see the socket, and a
    reused connection that stays silent is reported as stale."""

    stale_after: float = STALE_AFTER
    _lp_fresh = True
    _lp_raw: Any = None
    _lp_scope: Any = None

    def _new_conn(self) -> Any:
        sock = super()._new_conn()  # type: ignore[misc]
        self._lp_raw = sock  # reachable by the watchdog during the TLS handshake too
        return sock

    def connect(self) -> None:
        dl.claim(self)
        super().connect()  # type: ignore[misc]
        self._lp_fresh = True

    def request(self, method: str, *args: Any, **kwargs: Any) -> None:
        dl.claim(self)
        self._lp_method = method
        super().request(method, *args, **kwargs)  # type: ignore[misc]

    def getresponse(self) -> Any:
        reused, self._lp_fresh = not self._lp_fresh, False
        sock = getattr(self, "sock", None)
        timeout = getattr(self, "timeout", None)
        if (
            reused
            and getattr(self, "_lp_method", None) in IDEMPOTENT  # an upload's answer may take long (digesting)
            and sock is not None
            and isinstance(timeout, (int, float))
            and timeout > self.stale_after
            and not (hasattr(sock, "pending") and sock.pending())
            and not wait_for_read(sock, timeout=self.stale_after)
        ):
            raise StaleConnectionError(f"no answer on a reused connection within {self.stale_after}s")
        return super().getresponse()  # type: ignore[misc]


class _Conn(_Watched, HTTPConnection):
    pass


class _TLSConn(_Watched, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Conn


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConn


def attempt_timeout(connect: float = CONNECT_TIMEOUT, read: float = READ_TIMEOUT) -> urllib3.Timeout:
    """Socket timeouts for one attempt, capped by the time left in the current deadline."""
    left = max(dl.remaining(float("inf")), 0.01)
    return urllib3.Timeout(connect=min(connect, left), read=min(read, left))


class Transport:
    def __init__(
        self,
        *,
        max_retries: int = 4,
        backoff: float = 0.2,
        max_backoff: float = 3.0,
        total_timeout: float = 120.0,
        pool_size: int = 16,
        stale_after: float = STALE_AFTER,
    ) -> None:
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.total_timeout = total_timeout
        self.pool_size = pool_size
        self.stale_after = stale_after
        conn = type("Conn", (_Conn,), {"stale_after": stale_after})
        tls_conn = type("TLSConn", (_TLSConn,), {"stale_after": stale_after})
        self._pool_classes = {
            "http": type("Pool", (_Pool,), {"ConnectionCls": conn}),
            "https": type("TLSPool", (_TLSPool,), {"ConnectionCls": tls_conn}),
        }
        self._pools: dict[tuple[str | tuple[str, ...] | None, bool, tuple[str, str] | None], urllib3.PoolManager] = {}
        self._lock = threading.Lock()

    def pool(
        self,
        ca: str | tuple[str, ...] | None = None,
        skip_verify: bool = False,
        client_cert: tuple[str, str] | None = None,
    ) -> urllib3.PoolManager:
        key = (ca, skip_verify, client_cert)
        with self._lock:
            pm = self._pools.get(key)
            if pm is None:
                kw: dict[str, Any] = {"maxsize": self.pool_size, "block": False, "retries": False}
                if skip_verify:
                    kw["cert_reqs"] = "CERT_NONE"
                    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
                elif isinstance(ca, str):
                    kw["ca_certs"] = ca
                elif ca:  # several CA files (containerd's ca list): added to the system's roots
                    ctx = ssl.create_default_context()
                    for f in ca:
                        ctx.load_verify_locations(f)
                    kw["ssl_context"] = ctx
                if client_cert:
                    kw["cert_file"] = client_cert[0]
                    kw["key_file"] = client_cert[1] or None
                pm = self._pools[key] = urllib3.PoolManager(**kw)
                pm.pool_classes_by_scheme = self._pool_classes
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
        pm = self.pool(*(endpoint.tls if endpoint else (None, False, None)))
        hdrs = {"User-Agent": USER_AGENT, **(headers or {})}

        def once() -> urllib3.BaseHTTPResponse:
            if encode_body:
                return pm.request_encode_body(
                    method,
                    url,
                    fields=fields,
                    headers=hdrs,
                    encode_multipart=False,
                    timeout=attempt_timeout(),  # type: ignore[arg-type]  # urllib3 types **urlopen_kw as str
                )
            return pm.request(method, url, fields=fields, headers=hdrs, timeout=attempt_timeout())

        return self.with_retries(once, method, url)

    def with_retries(
        self,
        fn: Callable[[], urllib3.BaseHTTPResponse],
        method: str,
        what: str,
        deadline: float | None = None,
        retries: int | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """Run *fn*, retrying transient failures of idempotent requests with jittered backoff.

        Everything, retries included, ends by *deadline* (absolute, monotonic), the current
        deadline scope's, or ``total_timeout`` from now, whichever comes first. An explicit
        *deadline* is enforced on the sockets too (a trickling body is cut off). A 429 or 503
        with ``Retry-After`` waits as long as asked, if the deadline leaves that long; else
        :class:`Throttled` at once (the caller may go to another host)."""
        max_retries = self.max_retries if retries is None else retries
        at = deadline if deadline is not None else time.monotonic() + self.total_timeout
        with dl.deadline_scope(at=at, enforce=deadline is not None) as scope:
            budget = max(scope.remaining(), 0.0)
            attempt = stale = 0
            while True:
                err: str
                retry_after: str | None = None
                if scope.expired:  # spent (an earlier endpoint, or the caller's scope): no new attempt
                    raise DeadlineExceeded(f"{method} {_safe(what)}: the deadline passed before it could be sent")
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
                        plain = plainhttp.plain_http_host(what, reason if isinstance(reason, SSLError) else e)
                        if plain:
                            raise PlainHTTPRegistry(plain) from None
                        raise TransportError(
                            f"TLS verification failed for {_safe(what)}: {reason or e}; configure the "
                            "registry's CA (ca = ... in --registry-config) or use --insecure"
                        ) from None
                    if scope.expired:
                        raise DeadlineExceeded(
                            f"{method} {_safe(what)}: no complete answer within {budget:.1f}s "
                            f"({attempt + 1} attempt{'s' if attempt else ''}, last: {type(e).__name__})"
                        ) from None
                    if method not in IDEMPOTENT:
                        raise TransportError(f"{method} {_safe(what)} failed: {cause(e)}") from None
                    if _caused_by(e, StaleConnectionError) and stale < 2:
                        # The peer forgot our idle connections: try again now on a new one.
                        stale += 1
                        self._drop_idle(what)
                        log.debug("%s %s: stale keep-alive connection; retrying on a new one", method, _safe(what))
                        continue
                    err = cause(e)
                attempt += 1
                delay = min(self.max_backoff, self.backoff * (2 ** (attempt - 1))) * (0.5 + random.random() / 2)
                wait = retry_after_seconds(retry_after)
                if wait is not None:
                    if wait >= scope.remaining() - 0.05:
                        raise Throttled(
                            f"{method} {_safe(what)}: {err}, Retry-After {wait:g}s is past the deadline", wait
                        )
                    delay = max(delay, wait)
                if attempt > max_retries or scope.remaining() - delay <= 0.05:
                    msg = f"{method} {_safe(what)} failed after {attempt} attempts: {err}"
                    raise Throttled(msg, wait) if wait is not None else TransportError(msg)
                log.debug("retrying %s %s after %s (attempt %d)", method, _safe(what), err, attempt)
                time.sleep(delay)

    def _drop_idle(self, url: str) -> None:
        """Close the idle pooled connections to *url*'s host (the next request connects anew)."""
        with self._lock:
            pms = list(self._pools.values())
        for pm in pms:
            try:
                pool = pm.connection_from_url(url)
            except (Urllib3Error, ValueError):
                continue
            q = pool.pool
            if q is None:
                continue
            with q.mutex:
                idle = [c for c in q.queue if c is not None]
            for c in idle:
                c.close()


_CAUSES: tuple[tuple[type[BaseException], str], ...] = (
    (ConnectionRefusedError, "connection refused (nothing listens there: is the registry running, the port right?)"),
    (socket.gaierror, "the host name does not resolve"),
    (ConnectionResetError, "connection reset by the peer"),
    (StaleConnectionError, "no answer on a reused connection"),
    (TimeoutError, "timed out"),
    (NewConnectionError, "cannot connect"),
    (ProtocolError, "the connection broke off mid-answer"),
)


def cause(e: BaseException) -> str:
    """What went wrong under urllib3's wrapping (``MaxRetryError`` says nothing), in words."""
    for cls, words in _CAUSES:
        if _caused_by(e, cls):
            inner = _innermost(e, cls)
            detail = f" ({inner.strerror})" if isinstance(inner, socket.gaierror) and inner.strerror else ""
            return words + detail
    return type(e).__name__


def _innermost(e: BaseException | None, cls: type[BaseException], depth: int = 0) -> BaseException | None:
    if e is None or depth > 6:
        return None
    if isinstance(e, cls):
        return e
    for x in (getattr(e, "reason", None), e.__cause__, e.__context__, *e.args):
        if isinstance(x, BaseException) and (found := _innermost(x, cls, depth + 1)) is not None:
            return found
    return None


def _caused_by(e: BaseException | None, cls: type[BaseException], depth: int = 0) -> bool:
    """Whether *cls* is anywhere in urllib3's wrapping of *e* (reason, args, cause)."""
    if e is None or depth > 6:
        return False
    if isinstance(e, cls):
        return True
    inner = [getattr(e, "reason", None), e.__cause__, e.__context__, *e.args]
    return any(_caused_by(x, cls, depth + 1) for x in inner if isinstance(x, BaseException))


def _safe(url: str) -> str:
    """A URL without query strings (signed redirect URLs carry secrets there)."""
    return url.split("?", 1)[0]
