"""Registry options shared by every command: plain HTTP, TLS, credentials, hosts file.

Secrets stay out of argv (``ps`` shows it to every user for the life of a foreground
mount): ``--user NAME`` takes the password from ``--password-stdin`` or the environment
(``LAZYPULL_PASSWORD``; ``LAZYPULL_USER`` for the name); ``--user NAME:PASSWORD`` still
works for scripts that already use it.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lazypull.errors import ConfigError, LazypullError
from lazypull.registry.credentials import Credential

SECRET_KEYS = ("user", "credential")  # the keys of to_json() that carry secrets (never written to disk)


@dataclass
class RegistryOptions:
    plain_http: bool = False  # all hosts over plain HTTP (local registries)
    plain_http_hosts: set[str] = field(default_factory=set)
    insecure: bool = False  # skip TLS verification
    user: str | None = field(default=None, repr=False)  # "name:password"
    registry_config: Path | None = None  # hosts/mirrors TOML
    docker_config: Path | None = None  # docker config.json (default ~/.docker/config.json)
    credential: Credential | None = field(default=None, repr=False)  # in memory only (CRI keychain); wins

    def to_json(self) -> dict[str, object]:
        """For handing to the layer server; credentials travel only through its (0600) socket."""
        d: dict[str, object] = {
            "plain_http": self.plain_http,
            "plain_http_hosts": sorted(self.plain_http_hosts),
            "insecure": self.insecure,
            "user": self.user,
            "registry_config": str(self.registry_config) if self.registry_config else None,
            "docker_config": str(self.docker_config) if self.docker_config else None,
        }
        if self.credential is not None:
            d["credential"] = credential_to_json(self.credential)
        return d

    @classmethod
    def from_json(cls, d: dict[str, object]) -> RegistryOptions:
        return cls(
            plain_http=bool(d.get("plain_http")),
            plain_http_hosts=set(d.get("plain_http_hosts") or ()),  # type: ignore[call-overload]
            insecure=bool(d.get("insecure")),
            user=d.get("user") or None,  # type: ignore[arg-type]
            registry_config=Path(str(d["registry_config"])) if d.get("registry_config") else None,
            docker_config=Path(str(d["docker_config"])) if d.get("docker_config") else None,
            credential=credential_from_json(d.get("credential")),
        )


def credential_to_json(c: Credential) -> dict[str, object]:
    return {"username": c.username, "secret": c.secret, "identity_token": c.identity_token}


def credential_from_json(v: object) -> Credential | None:
    if not isinstance(v, dict) or not v.get("secret"):
        return None
    return Credential(str(v.get("username", "")), str(v["secret"]), bool(v.get("identity_token")))


def add_registry_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("registry")
    g.add_argument("--plain-http", action="store_true", help="talk to registries over plain HTTP")
    g.add_argument("--insecure", action="store_true", help="skip TLS certificate verification")
    g.add_argument(
        "--user",
        help="registry user NAME (password from --password-stdin or env LAZYPULL_PASSWORD; "
        "NAME:PASSWORD also works but shows in ps); default env LAZYPULL_USER",
    )
    g.add_argument("--password-stdin", action="store_true", help="read the registry password from stdin")
    g.add_argument(
        "--registry-config",
        type=Path,
        help='hosts/mirrors TOML ([resolver.host."HOST"] tables; [registry] config_path: containerd\'s hosts.toml dir)',
    )
    g.add_argument("--docker-config", type=Path, help="docker config.json for credentials")


def options_from_args(args: argparse.Namespace) -> RegistryOptions:
    """The registry flags; a config file named by a flag must exist (a typo is not "no config")."""
    for flag in ("registry_config", "docker_config"):
        path = getattr(args, flag, None)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"--{flag.replace('_', '-')} {path}: no such file")
    return RegistryOptions(
        plain_http=bool(getattr(args, "plain_http", False)),
        insecure=bool(getattr(args, "insecure", False)),
        user=_credentials(getattr(args, "user", None), bool(getattr(args, "password_stdin", False))),
        registry_config=getattr(args, "registry_config", None),
        docker_config=getattr(args, "docker_config", None),
    )


def _credentials(user: str | None, password_stdin: bool) -> str | None:
    """Credentials as NAME:PASSWORD from the flags and the environment, or None (anonymous/docker config)."""
    name = user or os.environ.get("LAZYPULL_USER") or None
    if password_stdin:
        if not name:
            raise LazypullError("--password-stdin needs --user NAME (or LAZYPULL_USER)")
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise LazypullError("--password-stdin: no password on stdin")
        return f"{name.partition(':')[0]}:{password}"
    if name is None or ":" in name:
        return name
    password = os.environ.get("LAZYPULL_PASSWORD")
    if not password:
        raise LazypullError(f"--user {name}: no password (use --password-stdin or set LAZYPULL_PASSWORD)")
    return f"{name}:{password}"


def add_push_credential_args(parser: argparse.ArgumentParser) -> None:
    """Write credentials, a setting of their own: pull credentials (``--user``, a node's
    or the kubelet's) never push by accident."""
    g = parser.add_argument_group("write credentials (only these push or delete)")
    g.add_argument(
        "--push-user",
        help="registry user NAME for writes (password from --push-password-stdin or env LAZYPULL_PUSH_PASSWORD); "
        "default env LAZYPULL_PUSH_USER",
    )
    g.add_argument("--push-password-stdin", action="store_true", help="read the write password from stdin")
    g.add_argument(
        "--push-docker-config", type=Path, help="docker config.json for writes (default: ~/.docker/config.json)"
    )


def push_options_from_args(args: argparse.Namespace) -> RegistryOptions:
    """The options that write: the pull flags' transport settings with the write credentials only."""
    pull = options_from_args(args)
    path = getattr(args, "push_docker_config", None)
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"--push-docker-config {path}: no such file")
    name = getattr(args, "push_user", None) or os.environ.get("LAZYPULL_PUSH_USER") or None
    user: str | None = name
    if getattr(args, "push_password_stdin", False):
        if not name:
            raise LazypullError("--push-password-stdin needs --push-user NAME (or LAZYPULL_PUSH_USER)")
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise LazypullError("--push-password-stdin: no password on stdin")
        user = f"{name.partition(':')[0]}:{password}"
    elif name is not None and ":" not in name:
        password = os.environ.get("LAZYPULL_PUSH_PASSWORD")
        if not password:
            raise LazypullError(f"--push-user {name}: no password (--push-password-stdin or LAZYPULL_PUSH_PASSWORD)")
        user = f"{name}:{password}"
    return RegistryOptions(
        plain_http=pull.plain_http,
        insecure=pull.insecure,
        user=user,
        registry_config=pull.registry_config,
        docker_config=path,
    )
