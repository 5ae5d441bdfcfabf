"""The daemon's read-only status endpoint: ``GET /status`` (JSON) on a unix socket.

Why a unix socket of its own rather than the metrics listener: the metrics listener is
optional (off unless ``metrics_address`` is set) and is usually reachable over the network
for Prometheus, while the status names the node's images, its pods and where their
credentials come from — the node administrator's business, like the containerd socket.
A 0600 socket next to the daemon's own (``status_socket``) needs no port, no
configuration and no access rules of its own: file permissions are the access control,
and it works whether or not metrics are served. It speaks plain HTTP/1.0, so
``curl --unix-socket SOCK http://localhost/status`` answers too.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from lazypull.errors import LazypullError

log = logging.getLogger(__name__)

PATH = "/status"


class StatusUnavailable(LazypullError):
    """No daemon answers on the status socket."""


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve_status(path: Path, report: Callable[[], dict[str, Any]]) -> _Server:
    """Serve *report()* as JSON on a new 0600 socket at *path*, in a background thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != PATH:
                self._send(404, {"error": f"not found: use GET {PATH}"})
                return
            try:
                body = report()
            except Exception as e:  # the status of a broken daemon still answers
                log.exception("status report failed")
                self._send(500, {"error": f"status report failed: {e}"})
                return
            self._send(200, body)

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def address_string(self) -> str:  # a unix socket's peer has no address
            return "local"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("status: " + format, *args)

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)
    old = os.umask(0o177)  # created 0600: never readable by others, not even for a moment
    try:
        server = _Server(str(path), Handler)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    threading.Thread(target=server.serve_forever, daemon=True, name="status").start()
    return server


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(str(self.unix_path))
        self.sock = s


def fetch_status(path: Path, timeout: float = 30.0) -> dict[str, Any]:
    """The daemon's report; :class:`StatusUnavailable` saying why when no daemon answers."""
    conn = _UnixConnection(path, timeout)
    try:
        conn.request("GET", PATH)
        resp = conn.getresponse()
        data = resp.read()
    except FileNotFoundError:
        raise StatusUnavailable(f"the lazypull daemon is not running (no status socket {path})") from None
    except ConnectionRefusedError:
        raise StatusUnavailable(f"the lazypull daemon is not running ({path} refuses connections)") from None
    except PermissionError:
        raise StatusUnavailable(f"cannot open {path}: permission denied (the status socket is root's)") from None
    except (OSError, http.client.HTTPException) as e:
        raise StatusUnavailable(f"the lazypull daemon does not answer on {path}: {e}") from None
    finally:
        conn.close()
    try:
        body = json.loads(data)
    except ValueError:
        raise StatusUnavailable(f"{path} answered something that is not the daemon's status") from None
    if resp.status != 200 or not isinstance(body, dict):
        why = body.get("error") if isinstance(body, dict) else None
        raise StatusUnavailable(f"the daemon's status failed: {why or resp.status}")
    return body
