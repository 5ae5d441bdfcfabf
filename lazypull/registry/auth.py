"""Registry authentication: WWW-Authenticate challenges, basic auth and bearer tokens.

Tokens are cached per (realm, service, scope) until shortly before they expire, and
fetched once at a time per key: the many readers of a node starting an image at once
wait for one token request instead of each sending their own. A 401
(or a 403: some registries answer so for a token they no longer accept) on a cached token
drops it and the request is retried once with a fresh one from the credentials, so
short-lived or revoked tokens never fail a caller.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lazypull.errors import RegistryError
from lazypull.registry.credentials import Credential

if TYPE_CHECKING:
    from lazypull.registry.transport import Transport

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer"
    params: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        return dict(self.params).get(key)

    @classmethod
    def parse(cls, header: str) -> Challenge | None:
        header = header.strip()
        if not header:
            return None
        scheme, _, rest = header.partition(" ")
        params = tuple(
            (m.group(1).lower(), m.group(2) if m.group(2) is not None else m.group(3)) for m in _PARAM.finditer(rest)
        )
        return cls(scheme.lower(), params)


@dataclass
class _Token:
    value: str
    expires: float


class Authenticator:
    """Produces Authorization headers for one registry host."""

    def __init__(self, credential: Credential | None, transport: Transport) -> None:
        self.credential = credential
        self.transport = transport
        self.challenge: Challenge | None = None
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._lock = threading.Lock()
        self._fetching: dict[tuple[str, str, str], threading.Lock] = {}  # one token request per key

    def header(self, scope: str) -> dict[str, str]:
        """Authorization for a request needing *scope* (empty before any challenge)."""
        ch = self.challenge
        if ch is None:
            return {}
        if ch.scheme == "basic":
            if not self.credential:
                raise RegistryError("registry requires credentials: pass --user or log in (docker config.json)")
            raw = f"{self.credential.username}:{self.credential.secret}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        if ch.scheme == "bearer":
            return {"Authorization": "Bearer " + self._token(ch, scope)}
        return {}

    def renew(self, credential: Credential | None) -> None:
        """Use *credential* from now on (rotated); tokens got with the old one are dropped."""
        with self._lock:
            self.credential = credential
            self._tokens.clear()

    def on_unauthorized(self, www_authenticate: str | None, scope: str) -> None:
        """Record a 401 challenge; drop cached tokens for the scope so the retry refreshes."""
        ch = Challenge.parse(www_authenticate or "")
        with self._lock:
            if ch is not None:
                self.challenge = ch
            if self.challenge is not None and self.challenge.scheme == "bearer":
                self._tokens.pop(self._key(self.challenge, scope), None)

    def on_forbidden(self, scope: str) -> bool:
        """A 403: drop the cached token for *scope*; True if there was one (a retry with a
        fresh token may succeed), False if the refusal is final (no token to renew)."""
        with self._lock:
            ch = self.challenge
            if ch is None or ch.scheme != "bearer":
                return False
            return self._tokens.pop(self._key(ch, scope), None) is not None

    @staticmethod
    def _key(ch: Challenge, scope: str) -> tuple[str, str, str]:
        return (ch.get("realm") or "", ch.get("service") or "", scope)

    def _cached(self, key: tuple[str, str, str]) -> str | None:
        with self._lock:
            tok = self._tokens.get(key)
            return tok.value if tok and tok.expires > time.monotonic() else None

    def _token(self, ch: Challenge, scope: str) -> str:
        key = self._key(ch, scope)
        if (value := self._cached(key)) is not None:
            return value
        with self._lock:
            gate = self._fetching.setdefault(key, threading.Lock())
        with gate:  # the others wait for the one request, then take its token
            if (value := self._cached(key)) is not None:
                return value
            return self._fetch_token(ch, scope, key)

    def _fetch_token(self, ch: Challenge, scope: str, key: tuple[str, str, str]) -> str:
        realm = ch.get("realm")
        if not realm:
            raise RegistryError("registry sent a bearer challenge without a realm")
        fields = {"service": ch.get("service") or "", "scope": scope}
        headers: dict[str, str] = {}
        cred = self.credential
        if cred and not cred.identity_token:
            raw = f"{cred.username}:{cred.secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        if cred and cred.identity_token:
            resp = self.transport.raw_request(
                "POST",
                realm,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                fields={**fields, "grant_type": "refresh_token", "refresh_token": cred.secret, "client_id": "lazypull"},
                encode_body=True,
            )
        else:
            resp = self.transport.raw_request("GET", realm, headers=headers, fields=fields)
        if resp.status in (401, 403):
            raise RegistryError(f"token service refused the credentials for {scope!r} (HTTP {resp.status})")
        if resp.status != 200:
            raise RegistryError(f"token service answered HTTP {resp.status} for {scope!r}")
        try:
            obj = json.loads(resp.data)
            value = obj.get("token") or obj.get("access_token")
            ttl = int(obj.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise RegistryError("token service returned an invalid response") from None
        if not value:
            raise RegistryError("token service returned no token")
        # Refresh a little early; very short tokens still get used once.
        tok = _Token(str(value), time.monotonic() + max(ttl - min(30, ttl // 2), 1))
        with self._lock:
            self._tokens[key] = tok
        return tok.value
