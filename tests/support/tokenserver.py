"""A small token service for the registry's ``auth.token`` mode: signed JWTs per scope.

It checks basic credentials, grants the requested actions, and can issue short-lived
tokens so clients must refresh. Tokens are RS256 JWTs with an x5c header chaining to
the registry's ``rootcertbundle``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from tests.support.pki import CertKey

ISSUER = "lazypull-test-issuer"
REGISTRY_LEEWAY = 60  # seconds docker-registry still accepts a token past its "exp" (clock skew)
SERVICE = "lazypull-test-registry"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    server: ThreadingHTTPServer
    signer: CertKey
    users: dict[str, str]
    ttl: int = 300
    issued: list[str] = field(default_factory=list)  # scopes, one per token issued
    # Seconds the registry accepts a token, whatever ``expires_in`` (``ttl``) tells the client:
    # a token cut short (revoked, or the issuer's clock ahead). None: the same as ``ttl``.
    lifetime: int | None = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def registry_config(self) -> dict[str, str]:
        return {"realm": self.realm, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": str(self.signer.cert)}

    def sign(self, sub: str, access: list[dict[str, object]]) -> str:
        der = self.signer.cert_obj.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": sub,
            "aud": SERVICE,
            "exp": now + (self.ttl if self.lifetime is None else self.lifetime - REGISTRY_LEEWAY),
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        sig = self.signer.key_obj.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(sig)}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_token_server(signer: CertKey, users: dict[str, str], ttl: int = 300) -> TokenServer:
    holder: dict[str, TokenServer] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # OAuth form posts (containerd tries them first): not offered, like GCR
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            ts = holder["ts"]
            q = parse_qs(urlsplit(self.path).query)
            auth = self.headers.get("Authorization", "")
            user = ""
            if auth.startswith("Basic "):
                name, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                if ts.users.get(name) != pw:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                user = name
            access = []
            for scope in q.get("scope", []):
                typ, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                acts = [a for a in actions.split(",") if a in ("pull", "push")] if user else []
                access.append({"type": typ, "name": name, "actions": acts})
                ts.issued.append(scope)
            body = json.dumps({"token": ts.sign(user, access), "expires_in": ts.ttl}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    ts = TokenServer(server, signer, users, ttl)
    holder["ts"] = ts
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return ts
