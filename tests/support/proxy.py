"""A threaded HTTP proxy on loopback in front of a registry: counts and breaks traffic.

Tests use it to count the bytes a lazy reader really fetched and to inject the faults
a network produces (resets, 5xx, slow and truncated responses) and those a misbehaving
registry produces: bodies trickled at a few bytes a second, requests accepted and never
answered, headers followed by silence, and keep-alive connections silently forgotten.
The lasting modes (trickle, stall, stale) hold until cleared; :meth:`Proxy.heal` clears
them and releases every connection they hold. :func:`unaccepting_port` is a port whose
listen queue is full: connecting to it hangs.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Faults:
    """Each counter is consumed by the next matching requests (path containing *match*)."""

    match: str = ""
    resets: int = 0  # close the connection without answering
    errors_500: int = 0
    throttle: int = 0  # answer 429 with Retry-After: retry_after
    retry_after: str = "1"
    ignore_range: bool = False  # drop the Range header: the whole blob with 200, as some mirrors do
    corrupt: bool = False  # flip a byte in the middle of every blob body (a bad mirror)
    truncate: int = 0  # send half the body, then close
    delay_s: float = 0.0  # added to every matching response
    redirect_blobs: bool = False  # answer blob GETs with 307 to "object storage" (/_storage/GEN/...)
    storage_generation: int = 0  # bump to expire earlier redirect URLs (they then get 403)
    # Lasting modes, for matching requests (and only those whose User-Agent contains *agent*).
    agent: str = ""
    trickle_bps: int = 0  # send the body at this many bytes per second
    stall: str = ""  # "accept": read the request, never answer; "body": send the headers, then nothing
    stale_after: int = 0  # a connection answers this many requests, then swallows the rest silently
    # The registry's 401 to a request that carried credentials goes out as 403 without a
    # challenge, as some registries and gateways refuse an expired or revoked token.
    deny_as_403: bool = False
    # The lasting modes hit only ranges that end before the blob does: data reads (a prefetch),
    # not the footer and TOC a mount reads from the tail.
    inner_ranges: bool = False


@dataclass
class Proxy:
    server: ThreadingHTTPServer
    upstream: str
    faults: Faults = field(default_factory=Faults)
    bytes_served: int = 0
    requests: int = 0
    log: list[tuple[str, str, int, int]] = field(default_factory=list)  # method, path, status, bytes
    lock: threading.Lock = field(default_factory=threading.Lock)
    heals: int = 0  # bumped by heal(): connections held before it let go

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def reset_counters(self) -> None:
        with self.lock:
            self.bytes_served = 0
            self.requests = 0
            self.log.clear()

    def blob_bytes(self) -> int:
        """Body bytes served for blob GETs only (what lazy reads cost)."""
        with self.lock:
            return sum(n for m, p, _s, n in self.log if m == "GET" and "/blobs/" in p)

    def heal(self) -> None:
        """End the lasting faults; connections they hold are closed unanswered."""
        with self.lock:
            f = self.faults
            f.trickle_bps, f.stall, f.stale_after, f.agent = 0, "", 0, ""
            self.heals += 1

    def stop(self) -> None:
        self.heal()
        self.server.shutdown()
        self.server.server_close()


def start_proxy(upstream_url: str) -> Proxy:
    up = urlsplit(upstream_url)
    state: dict[str, Proxy] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _take(self, name: str) -> bool:
            p = state["p"]
            with p.lock:
                f = p.faults
                if f.match not in self.path or getattr(f, name) <= 0:
                    return False
                setattr(f, name, getattr(f, name) - 1)
                return True

        def _lasting(self) -> bool:
            f = state["p"].faults
            return f.match in self.path and f.agent in (self.headers.get("User-Agent") or "")

        def _hold(self, still: Callable[[], bool]) -> None:
            """Keep the connection open and silent while *still* holds (until healed)."""
            p = state["p"]
            heals = p.heals
            while still() and p.heals == heals:
                time.sleep(0.05)
            self.close_connection = True

        def _handle(self) -> None:
            p = state["p"]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            served = getattr(self, "_served", 0)  # one handler per connection
            self._served = served + 1
            if p.faults.stale_after and served >= p.faults.stale_after and self._lasting():
                self._hold(lambda: bool(p.faults.stale_after))  # a forgotten connection: silence
                return
            if p.faults.stall == "accept" and self._lasting():
                self._hold(lambda: p.faults.stall == "accept")
                return
            if self._take("resets"):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.close_connection = True
                self.connection.close()
                return
            if self._take("errors_500"):
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self._take("throttle"):
                self.send_response(429)
                self.send_header("Retry-After", p.faults.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with p.lock:
                    p.log.append((self.command, self.path, 429, 0))
                return
            if p.faults.delay_s and p.faults.match in self.path:
                time.sleep(p.faults.delay_s)
            path = self.path
            if self.command == "GET" and path.startswith("/_storage/"):
                gen, _, rest = path[len("/_storage/") :].partition("/")
                if int(gen) != p.faults.storage_generation:
                    self.send_response(403)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = "/" + rest
            elif self.command == "GET" and p.faults.redirect_blobs and "/blobs/sha256:" in path:
                self.send_response(307)
                self.send_header("Location", f"{p.url}/_storage/{p.faults.storage_generation}{path}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                with p.lock:
                    p.log.append((self.command, self.path, 307, 0))
                return
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
            dropped = ("host", "connection", "range") if p.faults.ignore_range else ("host", "connection")
            headers: dict[str, str] = {}
            for k, v in self.headers.items():  # repeated headers (podman's Accept lines) joined
                if k.lower() not in dropped:
                    headers[k] = f"{headers[k]}, {v}" if k in headers else v
            headers["Host"] = f"{up.hostname}:{up.port}"
            try:
                conn.request(self.command, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except OSError:  # upstream down: answer like a gateway would
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            finally:
                conn.close()
            truncate = self._take("truncate") and len(data) > 1
            stall_body = p.faults.stall == "body" and self.command != "HEAD" and self._lasting()
            if p.faults.inner_ranges and not _inner_range(resp.getheader("Content-Range") or ""):
                stall_body = False
            trickle = p.faults.trickle_bps if self.command != "HEAD" and self._lasting() else 0
            status = resp.status
            if status == 401 and p.faults.deny_as_403 and "Authorization" in self.headers:
                status = 403
            self.send_response(status)
            for k, v in resp.getheaders():
                if status != resp.status and k.lower() == "www-authenticate":
                    continue
                if k.lower() in ("transfer-encoding", "connection") or (
                    k.lower() == "content-length" and self.command != "HEAD"
                ):
                    continue
                if k.lower() == "location" and v.startswith(f"http://{up.hostname}:{up.port}"):
                    v = v.replace(f"http://{up.hostname}:{up.port}", p.url, 1)
                self.send_header(k, v)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            sent = data[: len(data) // 2] if truncate else data
            if p.faults.corrupt and "/blobs/" in self.path and len(sent) > 1:
                mid = len(sent) // 2
                sent = sent[:mid] + bytes([sent[mid] ^ 0xFF]) + sent[mid + 1 :]
            with p.lock:  # counted before the client can see the answer
                p.requests += 1
                n = len(sent) if self.command != "HEAD" else 0
                p.bytes_served += n
                p.log.append((self.command, self.path, status, n))
            if stall_body and sent:
                self.wfile.flush()
                self._hold(lambda: p.faults.stall == "body")
                return
            if trickle and sent:
                self._trickle(sent, trickle)
                return
            if self.command != "HEAD":
                self.wfile.write(sent)
            if truncate:
                self.close_connection = True

        def _trickle(self, data: bytes, bps: int) -> None:
            """Send *data* a little at a time at about *bps*; back to full speed once healed."""
            p = state["p"]
            step = max(1, bps // 10)
            i = 0
            try:
                while i < len(data):
                    if p.faults.trickle_bps <= 0:
                        self.wfile.write(data[i:])
                        return
                    self.wfile.write(data[i : i + step])
                    self.wfile.flush()
                    i += step
                    time.sleep(step / bps)
            except OSError:
                self.close_connection = True

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    proxy = Proxy(server, upstream_url)
    state["p"] = proxy
    threading.Thread(target=server.serve_forever, daemon=True, name="test-proxy").start()
    return proxy


def _inner_range(content_range: str) -> bool:
    """Whether a ``Content-Range: bytes A-B/TOTAL`` answer ends before the blob does."""
    try:
        span, _, total = content_range.removeprefix("bytes ").partition("/")
        return int(span.partition("-")[2]) + 1 < int(total)
    except ValueError:
        return False


@contextmanager
def unaccepting_port() -> Iterator[str]:
    """A loopback ``host:port`` that never accepts: its listen queue is full, so a connect
    hangs until the client's timeout (a registry host whose server is wedged)."""
    srv = socket.socket()
    filler = socket.socket()
    try:
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)
        host, port = srv.getsockname()
        filler.connect((host, port))  # takes the only slot of the queue
        yield f"{host}:{port}"
    finally:
        filler.close()
        srv.close()
