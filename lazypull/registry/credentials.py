"""Where registry credentials come from: an explicit user, or docker's config.json.

Credentials are kept in a :class:`Credential` whose repr hides the secret, so they
cannot leak into logs or error messages by accident.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lazypull.errors import ConfigError, LazypullError


@dataclass(frozen=True)
class Credential:
    username: str
    secret: str = field(repr=False)
    identity_token: bool = False  # secret is an OAuth refresh token (docker "identitytoken")

    def __repr__(self) -> str:
        return f"Credential(username={self.username!r}, secret=<hidden>)"


def _docker_config_path(explicit: Path | None) -> Path:
    if explicit:
        return explicit
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _host_keys(registry: str) -> list[str]:
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry in ("docker.io", "registry-1.docker.io"):
        keys += ["https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"]
    return keys


def _from_helper(helper: str, registry: str) -> Credential | None:
    exe = f"docker-credential-{helper}"
    try:
        res = subprocess.run([exe, "get"], input=registry, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise LazypullError(f"credential helper {exe} is not installed (named in docker config)") from None
    except subprocess.TimeoutExpired:
        raise LazypullError(f"credential helper {exe} timed out") from None
    if res.returncode != 0:
        if "credentials not found" in (res.stdout + res.stderr).lower():
            return None
        raise LazypullError(f"credential helper {exe} failed (exit {res.returncode})")
    try:
        obj = json.loads(res.stdout)
    except ValueError:
        raise LazypullError(f"credential helper {exe} returned invalid JSON") from None
    user, secret = str(obj.get("Username", "")), str(obj.get("Secret", ""))
    if not secret:
        return None
    return Credential(user, secret, identity_token=user == "<token>")


def lookup(registry: str, *, user: str | None = None, docker_config: Path | None = None) -> Credential | None:
    """Credentials for *registry*: explicit ``name:password`` wins, then docker config."""
    if user:
        name, sep, password = user.partition(":")
        if not sep:
            raise LazypullError("--user must be NAME:PASSWORD")
        return Credential(name, password)
    path = _docker_config_path(docker_config)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read docker config {path}: {e}") from None
    keys = _host_keys(registry)
    helpers = cfg.get("credHelpers") or {}
    for k in keys:
        if k in helpers:
            return _from_helper(str(helpers[k]), registry)
    auths = cfg.get("auths") or {}
    for k in keys:
        entry = auths.get(k)
        if not isinstance(entry, dict):
            continue
        if entry.get("identitytoken"):
            return Credential(str(entry.get("username", "")), str(entry["identitytoken"]), identity_token=True)
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(entry["auth"]).decode()
            except (ValueError, UnicodeDecodeError):
                raise LazypullError(f"docker config {path}: invalid auth entry for {k}") from None
            name, _, password = decoded.partition(":")
            return Credential(name, password)
        if entry.get("username") and entry.get("password"):
            return Credential(str(entry["username"]), str(entry["password"]))
    if cfg.get("credsStore"):
        return _from_helper(str(cfg["credsStore"]), registry)
    return None
