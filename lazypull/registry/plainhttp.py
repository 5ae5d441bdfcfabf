"""Telling a plain-HTTP registry from a TLS one whose handshake failed, and what to do.

A TLS handshake with a server that speaks plain HTTP fails with an OpenSSL record error
(``WRONG_VERSION_NUMBER``) that reads like a certificate problem. ``--insecure`` (skip
verification) does not help there; what does is the scheme: ``--plain-http`` for the
commands, ``plain_http_hosts`` in the daemon's config. When a handshake fails, the server is
asked once more, in plain HTTP, and an answer starting ``HTTP/`` settles it.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

PROBE_TIMEOUT = 2.0
# OpenSSL's words for "the peer did not answer with a TLS record" (1.1 and 3.x).
_NOT_TLS = ("WRONG_VERSION_NUMBER", "wrong version number", "http request", "record layer failure",
            "packet length too long")


def hint(host: str) -> str:
    """The fix for a registry that speaks plain HTTP, for commands and for the daemon."""
    return (
        f"{host} answers plain HTTP, not HTTPS: use --plain-http with lazypull commands; for the snapshotter "
        f'daemon add plain_http_hosts = ["{host}"] to its config (--insecure only skips certificate checks)'
    )


def looks_like_plain_http(err: BaseException) -> bool:
    """Whether a failed handshake's error is the kind a plain-HTTP answer causes."""
    text = f"{getattr(err, 'reason', '')} {err}"
    return any(w in text for w in _NOT_TLS)


def answers_plain_http(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether *host*:*port* answers an HTTP request sent without TLS (as an HTTP server)."""
    answer = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"GET /v2/ HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
            while len(answer) < 512 and (part := s.recv(512)):
                answer += part
    except (OSError, UnicodeError):
        pass  # refused, reset or silent: what arrived (if anything) decides
    # Go's TLS servers (the CNCF registry, containerd) answer plain HTTP with a 400 that says so.
    return answer.startswith(b"HTTP/") and b"HTTP request to an HTTPS server" not in answer


def plain_http_host(url: str, err: BaseException) -> str | None:
    """The registry host of *url* (``HOST[:PORT]``) if *err*, its failed TLS handshake, came
    from a server that speaks plain HTTP; else None (a real TLS problem)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or not looks_like_plain_http(err):
        return None
    try:
        port = parts.port or 443
    except ValueError:
        return None
    return parts.netloc.rsplit("@", 1)[-1] if answers_plain_http(parts.hostname, port) else None
