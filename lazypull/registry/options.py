"""Registry options shared by every command: plain HTTP, TLS, credentials, hosts file."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from lazypull.registry.credentials import Credential


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
        """For handing to a mount process; credentials travel only through this (0600) spec."""
        return {
            "plain_http": self.plain_http,
            "plain_http_hosts": sorted(self.plain_http_hosts),
            "insecure": self.insecure,
            "user": self.user,
            "registry_config": str(self.registry_config) if self.registry_config else None,
            "docker_config": str(self.docker_config) if self.docker_config else None,
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> RegistryOptions:
        return cls(
            plain_http=bool(d.get("plain_http")),
            plain_http_hosts=set(d.get("plain_http_hosts") or ()),  # type: ignore[call-overload]
            insecure=bool(d.get("insecure")),
            user=d.get("user") or None,  # type: ignore[arg-type]
            registry_config=Path(str(d["registry_config"])) if d.get("registry_config") else None,
            docker_config=Path(str(d["docker_config"])) if d.get("docker_config") else None,
        )


def add_registry_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("registry")
    g.add_argument("--plain-http", action="store_true", help="talk to registries over plain HTTP")
    g.add_argument("--insecure", action="store_true", help="skip TLS certificate verification")
    g.add_argument("--user", help="credentials NAME:PASSWORD (or env LAZYPULL_USER)")
    g.add_argument("--registry-config", type=Path, help='hosts/mirrors TOML ([resolver.host."HOST"] tables)')
    g.add_argument("--docker-config", type=Path, help="docker config.json for credentials")


def options_from_args(args: argparse.Namespace) -> RegistryOptions:
    return RegistryOptions(
        plain_http=bool(getattr(args, "plain_http", False)),
        insecure=bool(getattr(args, "insecure", False)),
        user=getattr(args, "user", None) or os.environ.get("LAZYPULL_USER") or None,
        registry_config=getattr(args, "registry_config", None),
        docker_config=getattr(args, "docker_config", None),
    )
