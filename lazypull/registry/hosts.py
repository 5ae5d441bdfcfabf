"""Per-host registry configuration: the one place that knows schemes, TLS and mirrors.

The TOML shape follows the reference snapshotter's ``[resolver]`` section so its
configs carry over::

    [resolver.host."docker.io"]
    [[resolver.host."docker.io".mirrors]]
    host = "mirror.local:5000"
    insecure = true          # plain HTTP (the reference's meaning)

Additions: ``plain_http``, ``ca`` (PEM path), ``skip_verify``, ``request_timeout_sec``,
and ``header`` (extra request headers) on a host or a mirror.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazypull.errors import LazypullError


@dataclass(frozen=True)
class Endpoint:
    """One place to send requests for a registry: a mirror or the upstream itself."""

    host: str
    plain_http: bool = False
    skip_verify: bool = False
    ca: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    is_mirror: bool = False
    timeout: float = 30.0

    @property
    def base_url(self) -> str:
        return f"{'http' if self.plain_http else 'https'}://{self.host}"


@dataclass
class HostConfig:
    mirrors: list[Endpoint] = field(default_factory=list)
    plain_http: bool | None = None
    skip_verify: bool = False
    ca: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 30.0


@dataclass
class HostsConfig:
    hosts: dict[str, HostConfig] = field(default_factory=dict)
    plain_http_all: bool = False
    plain_http_hosts: set[str] = field(default_factory=set)
    skip_verify_all: bool = False

    @classmethod
    def load(cls, path: Path | None) -> HostsConfig:
        if path is None:
            return cls()
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise LazypullError(f"cannot read registry config {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise LazypullError(f"registry config {path} is not valid TOML: {e}") from None
        return cls.from_mapping(data.get("resolver", data))

    @classmethod
    def from_mapping(cls, resolver: dict[str, Any]) -> HostsConfig:
        out = cls()
        hosts = resolver.get("host", {}) if isinstance(resolver, dict) else {}
        if not isinstance(hosts, dict):
            raise LazypullError("registry config: [resolver.host] must be a table of hosts")
        for name, h in hosts.items():
            if not isinstance(h, dict):
                raise LazypullError(f"registry config: host {name!r} must be a table")
            hc = HostConfig(
                plain_http=h.get("plain_http"),
                skip_verify=bool(h.get("skip_verify", False)),
                ca=h.get("ca"),
                headers={str(k): str(v) for k, v in (h.get("header") or {}).items()},
                timeout=float(h.get("request_timeout_sec", 30)),
            )
            for m in h.get("mirrors", []) or []:
                if not isinstance(m, dict) or not m.get("host"):
                    raise LazypullError(f"registry config: a mirror of {name!r} has no host")
                plain = bool(m.get("plain_http", m.get("insecure", False)))
                hc.mirrors.append(
                    Endpoint(
                        host=str(m["host"]),
                        plain_http=plain,
                        skip_verify=bool(m.get("skip_verify", False)),
                        ca=m.get("ca"),
                        headers=tuple((str(k), str(v)) for k, v in (m.get("header") or {}).items()),
                        is_mirror=True,
                        timeout=float(m.get("request_timeout_sec", hc.timeout)),
                    )
                )
            out.hosts[name] = hc
        return out

    def endpoints(self, registry: str, api_host: str) -> list[Endpoint]:
        """Mirrors first (in order), then the registry itself."""
        hc = self.hosts.get(registry) or self.hosts.get(api_host) or HostConfig()
        plain = hc.plain_http
        if plain is None:
            plain = self.plain_http_all or registry in self.plain_http_hosts or api_host in self.plain_http_hosts
        upstream = Endpoint(
            host=api_host,
            plain_http=bool(plain),
            skip_verify=hc.skip_verify or self.skip_verify_all,
            ca=hc.ca,
            headers=tuple(hc.headers.items()),
            timeout=hc.timeout,
        )
        return [*hc.mirrors, upstream]
