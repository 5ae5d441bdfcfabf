"""Random access to one registry blob over HTTP Range: the lazy filesystem's byte source.

Thread-safe. Counts bytes and requests (the proof that pulling is lazy). Remembers
where the registry redirects blob reads (object storage) so later ranges go there
directly, and goes back to the registry when that URL stops working (signed URLs
expire). Each read, retries and body included, ends within one deadline: the caller's
deadline scope (the fetcher's), else the transport's ``total_timeout``.
"""

from __future__ import annotations

import threading
from urllib.parse import urljoin

import urllib3

from lazypull.errors import FormatError, RegistryError
from lazypull.oci.types import Descriptor
from lazypull.registry.client import RegistryClient, _range_body
from lazypull.registry.deadline import deadline_scope
from lazypull.registry.reference import Reference
from lazypull.registry.transport import TransportError, attempt_timeout


class RegistryBlobSource:
    def __init__(self, client: RegistryClient, ref: Reference, desc: Descriptor) -> None:
        self.client = client
        self.ref = ref
        self.desc = desc
        self.bytes_fetched = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._redirect: str | None = None

    @property
    def size(self) -> int:
        return self.desc.size

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.desc.size:
            raise FormatError(
                f"range [{offset}, {offset + length}) is outside blob {self.desc.digest} ({self.desc.size} bytes)"
            )
        if length == 0:
            return b""
        with deadline_scope(self.client.transport.total_timeout):
            data = self._fetch(offset, length)
        with self._lock:
            self.bytes_fetched += len(data)
            self.requests += 1
        return data

    def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Several (offset, length) ranges; adjacent or overlapping ones share one request."""
        if not ranges:
            return []
        order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
        out: list[bytes] = [b""] * len(ranges)
        group: list[int] = [order[0]]
        start, end = ranges[order[0]][0], ranges[order[0]][0] + ranges[order[0]][1]

        def flush() -> None:
            data = self.read_at(start, end - start)
            for i in group:
                o, n = ranges[i]
                out[i] = data[o - start : o - start + n]

        for i in order[1:]:
            o, n = ranges[i]
            if o <= end:
                group.append(i)
                end = max(end, o + n)
            else:
                flush()
                group, start, end = [i], o, o + n
        flush()
        return out

    def _fetch(self, offset: int, length: int) -> bytes:
        what = f"{self.ref.repository}@{self.desc.digest}"
        redirect = self._redirect
        if redirect:
            try:
                return self._fetch_redirect(redirect, offset, length, what)
            except (RegistryError, TransportError):
                self._redirect = None  # expired or gone: ask the registry again
        resp = self.client.request(
            self.ref,
            "GET",
            f"blobs/{self.desc.digest}",
            redirect=False,
            headers={"Range": f"bytes={offset}-{offset + length - 1}"},
            ok=(200, 206, 301, 302, 303, 307, 308),
        )
        if resp.status in (301, 302, 303, 307, 308):
            loc = resp.headers.get("Location")
            resp.release_conn()
            if not loc:
                raise RegistryError(f"{what}: redirect without a Location")
            base = self.client._host(self.ref).endpoints[-1].base_url + "/"
            self._redirect = urljoin(base, loc)
            return self._fetch_redirect(self._redirect, offset, length, what)
        return _range_body(resp, offset, length, what)

    def _fetch_redirect(self, url: str, offset: int, length: int, what: str) -> bytes:
        pm = self.client.transport.pool()

        def once() -> urllib3.BaseHTTPResponse:
            # No Authorization header: the signed URL carries its own authority.
            return pm.request(
                "GET",
                url,
                headers={"Range": f"bytes={offset}-{offset + length - 1}"},
                timeout=attempt_timeout(),
                redirect=True,
            )

        resp = self.client.transport.with_retries(once, "GET", url)
        if resp.status not in (200, 206):
            resp.release_conn()
            raise RegistryError(f"{what}: blob storage answered HTTP {resp.status}")
        return _range_body(resp, offset, length, what)
