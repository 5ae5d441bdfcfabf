"""Start the CNCF distribution registry (Debian's ``docker-registry``) on loopback.

Each test gets its own process, port and storage directory. Options cover the
configurations the registry client must handle: plain HTTP, TLS, htpasswd basic auth
and token auth (``auth.token``), so tests talk to a real registry, never a fake.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.net import free_port, port_open, wait_for

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


@dataclass
class Registry:
    port: int
    root: Path
    storage: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    scheme: str = "http"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the registry host part of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def blob_data_path(self, digest: str) -> Path:
        """Where the registry keeps a blob on disk (to tamper with it in tests)."""
        algo, hexd = digest.split(":", 1)
        return self.storage / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _yaml(obj: Any, indent: int = 0) -> str:
    """JSON is valid YAML; the registry's config loader accepts it."""
    return json.dumps(obj, indent=2)


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """A bcrypt htpasswd file for *users* (user: password); the registry rereads it when it
    changes, so writing it again with fewer users revokes the others."""
    lines = [
        subprocess.run(["htpasswd", "-Bbn", u, p], capture_output=True, text=True, check=True).stdout.strip()
        for u, p in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_registry(
    root: Path,
    *,
    tls: tuple[Path, Path] | None = None,
    htpasswd: Path | None = None,
    users: dict[str, str] | None = None,
    token: dict[str, Any] | None = None,
    storage: Path | None = None,
    port: int | None = None,
    proxy_remote: str | None = None,
) -> Registry:
    """Start a registry rooted at *root*.

    tls: (cert, key) PEM paths. htpasswd: bcrypt htpasswd file, or users: user -> password
    written to one under *root*. token: the registry's ``auth.token`` mapping (realm, service,
    issuer, rootcertbundle). proxy_remote: the origin's URL: the registry is then a
    pull-through cache (``proxy: remoteurl``).
    """
    root.mkdir(parents=True, exist_ok=True)
    if users:
        htpasswd = write_htpasswd(root / "htpasswd", users)
    storage = storage or root / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    http: dict[str, Any] = {"addr": f"127.0.0.1:{port}", "secret": "test-secret"}
    if tls:
        http["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    cfg: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": http,
    }
    if proxy_remote:
        cfg["proxy"] = {"remoteurl": proxy_remote}
    if htpasswd:
        cfg["auth"] = {"htpasswd": {"realm": "test-realm", "path": str(htpasswd)}}
    elif token:
        cfg["auth"] = {"token": token}
    cfg_path = root / "config.yml"
    cfg_path.write_text(_yaml(cfg))
    log_path = root / "registry.log"
    logf = open(log_path, "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(cfg_path)], stdout=logf, stderr=subprocess.STDOUT)
    reg = Registry(port, root, storage, proc, log_path, "https" if tls else "http")
    try:
        wait_for(lambda: proc.poll() is None and port_open(port), 20, "docker-registry to listen")
        if not tls and not htpasswd and not token:
            wait_for(lambda: urllib.request.urlopen(f"{reg.url}/v2/", timeout=2).status == 200, 10, "/v2/")
    except Exception:
        reg.stop()
        raise RuntimeError(f"docker-registry failed to start:\n{log_path.read_text(errors='replace')}") from None
    return reg
