"""Random access to one registry blob over HTTP Range: the lazy filesystem's byte source.

Thread-safe. Counts bytes and requests (the proof that pulling is lazy). Remembers
where the registry redirects blob reads (object storage) so later ranges go there
directly, and goes back to the registry when that URL stops working (signed URLs
expire). Each read, retries and body included, ends within one deadline: the caller's
deadline scope (the fetcher's), else the transport's ``total_timeout``.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import urljoin

import urllib3

from lazypull.errors import FormatError, RegistryError
from lazypull.oci.types import Descriptor
from lazypull.registry.client import RegistryClient, range_body
from lazypull.registry.deadline import deadline_scope
from lazypull.registry.reference import Reference
from lazypull.registry.transport import TransportError, attempt_timeout

NO_RANGE_HOLD = 10.0


class RegistryBlobSource:
    def __init__(self, client: RegistryClient, ref: Reference, desc: Descriptor) -> None:
        self.client = client
        self.ref = ref
        self.desc = desc
        self.bytes_fetched = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._redirect: str | None = None
        self._no_range: dict[str, float] = {}  # host -> until when it is not asked for this blob

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
        now = time.monotonic()
        skip = frozenset(h for h, until in self._no_range.items() if until > now)
        ep, got = self.client.read_range_from(self.ref, self.desc.digest, offset, length, skip, self.note_no_range)
        if isinstance(got, bytes):
            return got
        loc = got.headers.get("Location")
        if not loc:
            raise RegistryError(f"{what}: redirect without a Location")
        self._redirect = urljoin(ep.base_url + "/", loc)  # relative to the host that answered
        return self._fetch_redirect(self._redirect, offset, length, what)

    def note_no_range(self, host: str) -> None:
        """*host* answered this blob's ranges with the whole blob (a pull-through cache still
        filling it): send this blob's ranges elsewhere for ``NO_RANGE_HOLD`` seconds."""
        with self._lock:
            self._no_range[host] = time.monotonic() + NO_RANGE_HOLD

    def _fetch_redirect(self, url: str, offset: int, length: int, what: str) -> bytes:
        pm = self.client.transport.pool()
        got: list[bytes] = []

        def once() -> urllib3.BaseHTTPResponse:
            # No Authorization header: the signed URL carries its own authority.
            resp = pm.request(
                "GET",
                url,
                headers={"Range": f"bytes={offset}-{offset + length - 1}"},
                timeout=attempt_timeout(),
                redirect=True,
                preload_content=False,
            )
            if resp.status in (200, 206):
                got.append(range_body(resp, offset, length, what))
            return resp

        resp = self.client.transport.with_retries(once, "GET", url)
        if resp.status not in (200, 206):
            resp.drain_conn()
            resp.release_conn()
            raise RegistryError(f"{what}: blob storage answered HTTP {resp.status}")
        return got[-1]
