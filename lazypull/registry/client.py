"""The OCI distribution client: manifests, blobs (whole, streamed, ranged) and pushes.

Pulls try the host's mirrors first and fall back to the registry itself; pushes go to
the registry. Everything returned is checked: manifests against their digest, blob
streams by the caller through :class:`VerifyingReader`, ranges by the layer readers.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import BinaryIO, TypeVar
from urllib.parse import urlencode, urljoin

import urllib3
from urllib3.exceptions import ProtocolError

from lazypull.errors import LazypullError, RegistryError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import MAX_MANIFEST_BYTES, Descriptor
from lazypull.registry import credentials
from lazypull.registry.auth import Authenticator
from lazypull.registry.breaker import BREAKERS
from lazypull.registry.deadline import current as current_deadline
from lazypull.registry.deadline import deadline_scope
from lazypull.registry.deadline import remaining as remaining_time
from lazypull.registry.endpoint import Endpoint
from lazypull.registry.hostlimit import HOST_LIMITS, SlotTimeout
from lazypull.registry.hosts import HostsConfig
from lazypull.registry.hoststats import HOST_STATS
from lazypull.registry.options import RegistryOptions
from lazypull.registry.reference import Reference
from lazypull.registry.transport import (
    CONNECT_TIMEOUT,
    DeadlineExceeded,
    PlainHTTPRegistry,
    Throttled,
    Transport,
    TransportError,
    _safe,
    attempt_timeout,
)

log = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join([mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST])
CHUNKED_UPLOAD_THRESHOLD = 64 << 20
# urllib3 follows redirects only; retrying is Transport.with_retries' job.
# Retry-After is the transport's to honour: urllib3 would turn a 429 into an exception.
_NO_RETRY_FOLLOW = urllib3.Retry(
    total=5,
    connect=0,
    read=0,
    status=0,
    other=0,
    redirect=5,
    raise_on_redirect=False,
    raise_on_status=False,
    respect_retry_after_header=False,
)
UPLOAD_CHUNK = 16 << 20
# A mirror answering a range with the whole blob: read through this much before the range
# rather than go elsewhere (further in, the next host is asked).
MIRROR_SKIP_LIMIT = 1 << 20
MIRROR_CONNECT_TIMEOUT = 2.0
T = TypeVar("T")


class NotFoundError(RegistryError):
    """The registry has no such manifest or blob."""


@dataclass
class _Host:
    endpoints: list[Endpoint]
    auth: Authenticator


class RegistryClient:
    """One client per process: shares connection pools, tokens and host state."""

    def __init__(
        self, opts: RegistryOptions | None = None, hosts: HostsConfig | None = None, transport: Transport | None = None
    ) -> None:
        self.opts = opts or RegistryOptions()
        self.hosts = hosts or HostsConfig.load(self.opts.registry_config)
        self.hosts.plain_http_all = self.hosts.plain_http_all or self.opts.plain_http
        self.hosts.plain_http_hosts |= self.opts.plain_http_hosts
        self.hosts.skip_verify_all = self.hosts.skip_verify_all or self.opts.insecure
        self.transport = transport or Transport()
        self._hosts: dict[str, _Host] = {}
        self._lock = threading.Lock()

    def _host(self, ref: Reference) -> _Host:
        with self._lock:
            h = self._hosts.get(ref.registry)
            if h is None:
                cred = self.opts.credential or credentials.lookup(
                    ref.registry, user=self.opts.user, docker_config=self.opts.docker_config
                )
                h = _Host(self.hosts.endpoints(ref.registry, ref.host), Authenticator(cred, self.transport))
                self._hosts[ref.registry] = h
            return h

    def renew_credential(self, credential: credentials.Credential) -> None:
        """The explicit credential was rotated: requests from now on (of every open blob
        source holding this client) authenticate with *credential*."""
        with self._lock:
            self.opts = replace(self.opts, credential=credential)
            hosts = list(self._hosts.values())
        for h in hosts:
            h.auth.renew(credential)

    def check_reachable(self, ref: Reference, timeout: float = CONNECT_TIMEOUT) -> None:
        """Raise unless *ref*'s registry answers HTTP at all (any status: auth comes later).

        Commands that end in a push ask first, so a dead port fails in seconds with its cause
        rather than after the whole conversion."""
        ep = self._host(ref).endpoints[-1]  # pushes go to the registry itself, not a mirror
        quick = Transport(max_retries=1, total_timeout=timeout)
        try:
            quick.raw_request("GET", f"{ep.api_url}/", endpoint=ep).release_conn()
        except PlainHTTPRegistry:
            raise
        except TransportError as e:
            raise TransportError(f"cannot reach the registry {ref.registry} to push {ref}: {e}") from None

    # -- the request loop -------------------------------------------------------------
    def request(
        self,
        ref: Reference,
        method: str,
        path: str,
        *,
        scope: str = "pull",
        headers: dict[str, str] | None = None,
        body: bytes | BinaryIO | None = None,
        preload: bool = True,
        redirect: bool = True,
        upstream_only: bool = False,
        ok: tuple[int, ...] = (200,),
        deadline: float | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """Send a request for *ref*'s repository, handling auth, retries and mirrors.

        *path* is relative to ``/v2/<repository>/`` unless it starts with '/' or is a URL.
        Returns the first response whose status is in *ok*; raises otherwise.
        """
        return self.send(
            ref,
            method,
            path,
            _answer,
            scope=scope,
            headers=headers,
            body=body,
            preload=preload,
            redirect=redirect,
            upstream_only=upstream_only,
            ok=ok,
            deadline=deadline,
        )

    def send(
        self,
        ref: Reference,
        method: str,
        path: str,
        reader: Callable[[Endpoint, urllib3.BaseHTTPResponse], T],
        *,
        scope: str = "pull",
        headers: dict[str, str] | None = None,
        body: bytes | BinaryIO | None = None,
        preload: bool = True,
        redirect: bool = True,
        upstream_only: bool = False,
        ok: tuple[int, ...] = (200,),
        deadline: float | None = None,
        skip_hosts: frozenset[str] = frozenset(),
    ) -> T:
        """:meth:`request`, with *reader* making the result from the answer while the host's
        request slot is held and its share of the deadline runs: a host whose body fails
        (cut off, too slow, or the whole blob for a range) is failed over like one that
        did not answer. Hosts in *skip_hosts* are left out (not the registry itself)."""
        host = self._host(ref)
        endpoints = self._endpoints(ref, host, method, path, upstream_only, skip_hosts)
        full_scope = f"repository:{ref.repository}:{scope}"
        last: Exception | None = None
        for i, ep in enumerate(endpoints):
            final = i == len(endpoints) - 1
            try:
                limit = self.hosts.max_requests_per_host
                with (
                    _share(ep, len(endpoints) - i, final, self.transport.total_timeout),
                    HOST_LIMITS.slot(ep.host, limit, self.transport.total_timeout),
                ):
                    result = self._request_endpoint(
                        ep,
                        host.auth,
                        method,
                        path,
                        ref,
                        full_scope,
                        headers,
                        body,
                        preload,
                        redirect,
                        ok,
                        deadline,
                        functools.partial(reader, ep),
                    )
                if ep.is_mirror:
                    BREAKERS.success(ep.host)
                return result
            except SlotTimeout as e:
                if final:
                    raise DeadlineExceeded(str(e)) from None
                last = e
            except NotFoundError as e:
                if not ep.is_mirror:
                    raise
                last = e
            except Throttled as e:
                BREAKERS.throttled(ep.host, e.retry_after)
                if final or _outer_expired():
                    raise
                last = e
            except (TransportError, RegistryError) as e:
                if ep.is_mirror and not isinstance(e, RangeIgnored):
                    wait = BREAKERS.failure(ep.host)
                    log.info("mirror %s skipped for %.0fs after: %s", ep.host, wait, e)
                if final or _outer_expired():
                    raise  # the last endpoint, or no time left for the next one
                last = e
            log.info("host %s failed for %s (%s); trying the next one", ep.host, ref, last)
        assert last is not None
        raise last

    def _endpoints(
        self, ref: Reference, host: _Host, method: str, path: str, upstream_only: bool, skip: frozenset[str]
    ) -> list[Endpoint]:
        """The hosts to try, in order: for pushes the registry; for reads those with the
        capability (``resolve`` for a tag lookup, ``pull`` else) whose breaker is closed."""
        if upstream_only or method not in ("GET", "HEAD"):
            return host.endpoints[-1:]
        need = "resolve" if _is_tag_lookup(path) else "pull"
        able = [e for e in host.endpoints if need in e.capabilities]
        if not able:
            raise RegistryError(f"{ref.registry}: no configured host has the {need!r} capability")
        last = able[-1]
        return [e for e in able if e is last or (e.host not in skip and BREAKERS.allow(e.host))]

    def _request_endpoint(
        self,
        ep: Endpoint,
        auth: Authenticator,
        method: str,
        path: str,
        ref: Reference,
        scope: str,
        headers: dict[str, str] | None,
        body: bytes | BinaryIO | None,
        preload: bool,
        redirect: bool,
        ok: tuple[int, ...],
        deadline: float | None,
        reader: Callable[[urllib3.BaseHTTPResponse], T],
    ) -> T:
        """One host's answer, made into the result by *reader* within the retries (a body
        cut off mid-read is asked again like a failed request)."""
        if path.startswith(("http://", "https://")):
            url = path
        elif path.startswith("/v2/"):
            url = ep.api_url + path[3:]
        elif path.startswith("/"):
            url = ep.base_url + path
        else:
            url = f"{ep.api_url}/{ref.repository}/{path}"
            if ep.ns_query:  # containerd's: tells a shared mirror which registry is meant
                url += ("&" if "?" in url else "?") + urlencode({"ns": ref.registry})
        pm = self.transport.pool(*ep.tls)
        # A mirror is near (a zone cache, a node-local one): one that does not take the
        # connection in a moment is down, and the next host should get the time.
        connect = min(CONNECT_TIMEOUT, ep.timeout, MIRROR_CONNECT_TIMEOUT if ep.is_mirror else CONNECT_TIMEOUT)
        made: dict[urllib3.BaseHTTPResponse, T] = {}
        for attempt in range(2):  # second try after a 401 refreshed the credentials
            hdrs = {"User-Agent": "lazypull/0.1", **dict(ep.headers), **(headers or {}), **auth.header(scope)}
            data: bytes | BinaryIO | None
            if isinstance(body, bytes) or body is None:
                data = body
            else:
                data = body  # streamed upload: not retried, so one pass is fine

            def once(hdrs: dict[str, str] = hdrs, data: bytes | BinaryIO | None = data) -> urllib3.BaseHTTPResponse:
                try:
                    r = pm.request(
                        method,
                        url,
                        headers=hdrs,
                        body=data,
                        preload_content=preload,
                        redirect=redirect,
                        timeout=attempt_timeout(connect, ep.timeout),
                        retries=_NO_RETRY_FOLLOW if redirect else False,
                    )
                    HOST_STATS.add(
                        ep.host,
                        requests=1,
                        bytes=len(r.data) if preload else 0,
                        errors=1 if r.status >= 500 else 0,
                        throttles=1 if r.status == 429 or (r.status == 503 and "Retry-After" in r.headers) else 0,
                    )
                    if r.status in ok:
                        made[r] = reader(r)
                except (urllib3.exceptions.HTTPError, OSError):
                    HOST_STATS.add(ep.host, errors=1)
                    raise
                return r

            # A failing mirror is not asked again: the next host is the better bet.
            retries = 0 if ep.is_mirror else None
            resp = self.transport.with_retries(once, method, url, deadline, retries=retries)
            if attempt == 0 and (body is None or isinstance(body, bytes)):
                if resp.status == 401:
                    auth.on_unauthorized(resp.headers.get("WWW-Authenticate"), scope)
                    _discard(resp)
                    continue
                if resp.status == 403 and auth.on_forbidden(scope):
                    # Some registries (and gateways in front of them) refuse an expired or
                    # revoked token with 403: a fresh token from the credentials may do.
                    log.debug("%s %s: HTTP 403 with a cached token; retrying with a new one", method, _safe(url))
                    _discard(resp)
                    continue
            break
        if resp.status in ok:
            return made[resp]
        msg = _error_text(resp)
        resp.release_conn()
        where = f"{method} {_safe(url)}"
        if resp.status == 404:
            raise NotFoundError(f"{ref}: not found ({where}){msg}")
        if resp.status in (401, 403):
            raise RegistryError(
                f"{ref}: access denied (HTTP {resp.status} for {where}){msg}; check --user or your docker credentials"
            )
        raise RegistryError(f"{ref}: HTTP {resp.status} for {where}{msg}")

    # -- manifests --------------------------------------------------------------------
    def get_manifest(self, ref: Reference) -> tuple[bytes, str, str]:
        """(document, media type, digest) of the manifest or index *ref* names, verified."""
        resp = self.request(ref, "GET", f"manifests/{ref.object}", headers={"Accept": MANIFEST_ACCEPT}, preload=False)
        try:
            length = int(resp.headers.get("Content-Length") or 0)
            if length > MAX_MANIFEST_BYTES:
                raise RegistryError(f"{ref}: manifest is {length} bytes, over the {MAX_MANIFEST_BYTES} byte limit")
            data = resp.read(MAX_MANIFEST_BYTES + 1)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise TransportError(f"{ref}: reading the manifest failed: {type(e).__name__}") from None
        finally:
            resp.release_conn()
        if len(data) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"{ref}: manifest over the {MAX_MANIFEST_BYTES} byte limit")
        media_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        if ref.digest:
            digestlib.verify(data, ref.digest, what=f"manifest {ref}")
            dg = ref.digest
        else:
            dg = digestlib.of_bytes(data)
            header = resp.headers.get("Docker-Content-Digest")
            if header and header != dg:
                raise RegistryError(f"{ref}: manifest digest {dg} does not match the registry's {header}")
        if media_type not in mt.MANIFEST_TYPES | mt.INDEX_TYPES:
            from lazypull.oci.types import sniff_media_type

            media_type = sniff_media_type(data)
        return data, media_type, dg

    def put_manifest(self, ref: Reference, data: bytes, media_type: str, tag: str | None = None) -> str:
        dg = digestlib.of_bytes(data)
        target = tag or dg
        self.request(
            ref,
            "PUT",
            f"manifests/{target}",
            scope="pull,push",
            headers={"Content-Type": media_type},
            body=data,
            ok=(201, 200),
        )
        return dg

    # -- blobs --------------------------------------------------------------------------
    def blob_exists(self, ref: Reference, digest: str) -> int | None:
        """The blob's size if the repository has it, else None."""
        try:
            resp = self.request(ref, "HEAD", f"blobs/{digest}", upstream_only=True)
        except NotFoundError:
            return None
        return int(resp.headers.get("Content-Length") or 0)

    def open_blob(self, ref: Reference, desc: Descriptor) -> BinaryIO:
        """A stream of the blob (verify it with VerifyingReader)."""
        resp = self.request(ref, "GET", f"blobs/{desc.digest}", preload=False)
        if isinstance(resp, urllib3.HTTPResponse):  # what the pools return; closed at EOF like a file
            resp.auto_close = True
        return resp  # type: ignore[return-value]

    def read_range(self, ref: Reference, digest: str, offset: int, length: int) -> bytes:
        """Exactly *length* bytes of the blob from *offset* (one Range request)."""
        if length == 0:
            return b""

        def read(ep: Endpoint, resp: urllib3.BaseHTTPResponse) -> bytes:
            what = f"{ref.repository}@{digest}"
            return range_body(resp, offset, length, what, skip_limit=MIRROR_SKIP_LIMIT if ep.is_mirror else 0)

        return self.send(
            ref,
            "GET",
            f"blobs/{digest}",
            read,
            preload=False,
            headers={"Range": f"bytes={offset}-{offset + length - 1}"},
            ok=(206, 200),
        )

    def push_blob(self, ref: Reference, desc: Descriptor, stream: BinaryIO, mount_from: str | None = None) -> None:
        """Upload a blob unless present; tries a cross-repository mount from *mount_from* first."""
        if self.blob_exists(ref, desc.digest) is not None:
            return
        params = {"mount": desc.digest, "from": mount_from} if mount_from else {}
        path = "blobs/uploads/" + (f"?{urlencode(params)}" if params else "")
        resp = self.request(ref, "POST", path, scope="pull,push", ok=(201, 202), upstream_only=True)
        if resp.status == 201:
            log.info("mounted %s into %s from %s", desc.digest, ref.repository, mount_from)
            return
        location = self._location(ref, resp)
        if desc.size <= CHUNKED_UPLOAD_THRESHOLD:
            data = stream.read(desc.size + 1)
            if len(data) != desc.size:
                raise LazypullError(f"blob {desc.digest}: source has {len(data)} bytes, expected {desc.size}")
            self.request(
                ref,
                "PUT",
                _with_digest(location, desc.digest),
                scope="pull,push",
                body=data,
                headers={"Content-Type": "application/octet-stream"},
                ok=(201,),
                upstream_only=True,
            )
            return
        sent = 0
        while True:
            part = stream.read(UPLOAD_CHUNK)
            if not part:
                break
            r = self.request(
                ref,
                "PATCH",
                location,
                scope="pull,push",
                body=part,
                upstream_only=True,
                headers={"Content-Type": "application/octet-stream", "Content-Range": f"{sent}-{sent + len(part) - 1}"},
                ok=(202,),
            )
            location = self._location(ref, r)
            sent += len(part)
        if sent != desc.size:
            raise LazypullError(f"blob {desc.digest}: source has {sent} bytes, expected {desc.size}")
        self.request(
            ref, "PUT", _with_digest(location, desc.digest), scope="pull,push", body=b"", ok=(201,), upstream_only=True
        )

    def _location(self, ref: Reference, resp: urllib3.BaseHTTPResponse) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(f"{ref}: upload response has no Location header")
        base = self._host(ref).endpoints[-1].base_url + "/"
        return urljoin(base, loc)

    def read_range_from(
        self,
        ref: Reference,
        digest: str,
        offset: int,
        length: int,
        skip_hosts: frozenset[str] = frozenset(),
        no_range: Callable[[str], None] | None = None,
    ) -> tuple[Endpoint, urllib3.BaseHTTPResponse | bytes]:
        """One range of a blob from the first host that serves it: (host, bytes), or (host,
        redirect answer) when the host sends the read elsewhere (object storage).
        *no_range* hears of a host that answered with the whole blob."""

        def read(ep: Endpoint, resp: urllib3.BaseHTTPResponse) -> tuple[Endpoint, urllib3.BaseHTTPResponse | bytes]:
            if resp.status in (301, 302, 303, 307, 308):
                resp.drain_conn()
                resp.release_conn()
                return ep, resp
            what = f"{ref.repository}@{digest} from {ep.host}"
            try:
                data = range_body(resp, offset, length, what, skip_limit=MIRROR_SKIP_LIMIT if ep.is_mirror else 0)
            except RangeIgnored:
                if no_range is not None:
                    no_range(ep.host)
                raise
            HOST_STATS.add(ep.host, bytes=len(data))
            return ep, data

        return self.send(
            ref,
            "GET",
            f"blobs/{digest}",
            read,
            redirect=False,
            preload=False,
            headers={"Range": f"bytes={offset}-{offset + length - 1}"},
            ok=(200, 206, 301, 302, 303, 307, 308),
            skip_hosts=skip_hosts,
        )


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + urlencode({"digest": digest})


def _discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Give the connection back after a small error body (read, so the connection is clean)."""
    try:
        resp.read(1 << 16)
    except (urllib3.exceptions.HTTPError, OSError):
        pass
    if getattr(resp, "length_remaining", None) != 0:
        resp.close()
    resp.release_conn()


def _answer(ep: Endpoint, resp: urllib3.BaseHTTPResponse) -> urllib3.BaseHTTPResponse:
    return resp


def _is_tag_lookup(path: str) -> bool:
    kind, _, obj = path.partition("/")
    return kind == "manifests" and ":" not in obj


def _outer_expired() -> bool:
    d = current_deadline()
    return d is not None and d.expired


@contextmanager
def _share(ep: Endpoint, left: int, final: bool, default: float) -> Iterator[None]:
    """A host that is not the last gets an equal share of the time left (at most its
    request timeout), so a hung or trickling mirror leaves the others time to answer."""
    if final:
        yield
        return
    share = min(ep.timeout, max(remaining_time(default), 0.0) / left)
    with deadline_scope(share):
        yield


class RangeIgnored(RegistryError):
    """The host answered a range request with the whole blob, and the range is too far in."""


def range_body(resp: urllib3.BaseHTTPResponse, offset: int, length: int, what: str, skip_limit: int = 0) -> bytes:
    """The *length* bytes at *offset* from an answer to a Range request, read without the
    rest: a host that ignores Range (200 and the whole blob, as a pull-through cache does
    for a blob it is still fetching) costs the bytes up to the range's end, then the
    connection is dropped; up to *skip_limit* bytes before the range are read and thrown
    away, a range further in raises :class:`RangeIgnored` (ask another host). A body cut
    short raises urllib3's ``ProtocolError``: the transport retries it."""
    try:
        if resp.status == 206:
            data = resp.read(length + 1)
            if len(data) != length:
                raise ProtocolError(f"{what}: range [{offset}, {offset + length}) returned {len(data)} bytes")
            return data
        if offset > skip_limit:
            if skip_limit:
                raise RangeIgnored(f"{what}: the host ignores HTTP Range (HTTP 200, the whole blob)")
            raise RegistryError(f"{what}: the registry ignores HTTP Range requests; lazy pulling needs them")
        left = offset
        while left:
            got = resp.read(min(left, 1 << 16))
            if not got:
                break
            left -= len(got)
        data = resp.read(length) if not left else b""
        if len(data) != length:
            raise ProtocolError(f"{what}: the whole-blob answer ended before [{offset}, {offset + length})")
        return data
    finally:
        if getattr(resp, "length_remaining", None) != 0:
            resp.close()  # bytes left unread: this connection cannot serve another request
        resp.release_conn()


def _error_text(resp: urllib3.BaseHTTPResponse) -> str:
    try:
        import json

        obj = json.loads(resp.data[:4096])
        errs = obj.get("errors") or []
        if errs:
            return ": " + "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs[:3])
    except Exception:
        pass
    return ""
