"""The OCI distribution client: manifests, blobs (whole, streamed, ranged) and pushes.

Pulls try the host's mirrors first and fall back to the registry itself; pushes go to
the registry. Everything returned is checked: manifests against their digest, blob
streams by the caller through :class:`VerifyingReader`, ranges by the layer readers.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import BinaryIO
from urllib.parse import urlencode, urljoin

import urllib3

from lazypull.errors import LazypullError, RegistryError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import MAX_MANIFEST_BYTES, Descriptor
from lazypull.registry import credentials
from lazypull.registry.auth import Authenticator
from lazypull.registry.deadline import current as current_deadline
from lazypull.registry.hosts import Endpoint, HostsConfig
from lazypull.registry.options import RegistryOptions
from lazypull.registry.reference import Reference
from lazypull.registry.transport import (
    CONNECT_TIMEOUT,
    PlainHTTPRegistry,
    Transport,
    TransportError,
    _safe,
    attempt_timeout,
)

log = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join([mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST])
CHUNKED_UPLOAD_THRESHOLD = 64 << 20
# urllib3 follows redirects only; retrying is Transport.with_retries' job.
_NO_RETRY_FOLLOW = urllib3.Retry(total=5, connect=0, read=0, status=0, other=0, redirect=5, raise_on_redirect=False)
UPLOAD_CHUNK = 16 << 20


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
            quick.raw_request("GET", f"{ep.base_url}/v2/", endpoint=ep).release_conn()
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
        host = self._host(ref)
        endpoints = host.endpoints[-1:] if upstream_only or method not in ("GET", "HEAD") else host.endpoints
        full_scope = f"repository:{ref.repository}:{scope}"
        last: Exception | None = None
        for i, ep in enumerate(endpoints):
            try:
                return self._request_endpoint(
                    ep, host.auth, method, path, ref, full_scope, headers, body, preload, redirect, ok, deadline
                )
            except NotFoundError as e:
                if not ep.is_mirror:
                    raise
                last = e
            except (TransportError, RegistryError) as e:
                dl = current_deadline()
                if i == len(endpoints) - 1 or (dl is not None and dl.expired):
                    raise  # the last endpoint, or no time left for the next one
                last = e
            log.info("mirror %s failed for %s (%s); trying the next endpoint", ep.host, ref, last)
        assert last is not None
        raise last

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
    ) -> urllib3.BaseHTTPResponse:
        if path.startswith(("http://", "https://")):
            url = path
        elif path.startswith("/"):
            url = ep.base_url + path
        else:
            url = f"{ep.base_url}/v2/{ref.repository}/{path}"
        pm = self.transport.pool(ep.ca, ep.skip_verify)
        for attempt in range(2):  # second try after a 401 refreshed the credentials
            hdrs = {"User-Agent": "lazypull/0.1", **dict(ep.headers), **(headers or {}), **auth.header(scope)}
            data: bytes | BinaryIO | None
            if isinstance(body, bytes) or body is None:
                data = body
            else:
                data = body  # streamed upload: not retried, so one pass is fine

            def once(hdrs: dict[str, str] = hdrs, data: bytes | BinaryIO | None = data) -> urllib3.BaseHTTPResponse:
                return pm.request(
                    method,
                    url,
                    headers=hdrs,
                    body=data,
                    preload_content=preload,
                    redirect=redirect,
                    timeout=attempt_timeout(min(CONNECT_TIMEOUT, ep.timeout), ep.timeout),
                    retries=_NO_RETRY_FOLLOW if redirect else False,
                )

            resp = self.transport.with_retries(once, method, url, deadline)
            if attempt == 0 and (body is None or isinstance(body, bytes)):
                if resp.status == 401:
                    auth.on_unauthorized(resp.headers.get("WWW-Authenticate"), scope)
                    resp.release_conn()
                    continue
                if resp.status == 403 and auth.on_forbidden(scope):
                    # Some registries (and gateways in front of them) refuse an expired or
                    # revoked token with 403: a fresh token from the credentials may do.
                    log.debug("%s %s: HTTP 403 with a cached token; retrying with a new one", method, _safe(url))
                    resp.release_conn()
                    continue
            break
        if resp.status in ok:
            return resp
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
        resp = self.request(
            ref, "GET", f"blobs/{digest}", headers={"Range": f"bytes={offset}-{offset + length - 1}"}, ok=(206, 200)
        )
        return _range_body(resp, offset, length, f"{ref.repository}@{digest}")

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


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + urlencode({"digest": digest})


def _range_body(resp: urllib3.BaseHTTPResponse, offset: int, length: int, what: str) -> bytes:
    data = resp.data
    if resp.status == 200:
        # The server ignored Range; accept only if it sent exactly what was asked.
        if offset == 0 and len(data) >= length:
            return data[:length]
        raise RegistryError(f"{what}: the registry ignores HTTP Range requests; lazy pulling needs them")
    if len(data) != length:
        raise TransportError(f"{what}: range [{offset}, {offset + length}) returned {len(data)} bytes")
    return data


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
