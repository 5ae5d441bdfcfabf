"""Per-host registry configuration: the one place that knows schemes, TLS and mirrors.

The TOML shape follows the reference snapshotter's ``[resolver]`` section so its
configs carry over::

    [resolver.host."docker.io"]
    [[resolver.host."docker.io".mirrors]]
    host = "mirror.local:5000"
    insecure = true          # plain HTTP (the reference's meaning)

Additions: ``plain_http``, ``ca`` (PEM path), ``skip_verify``, ``request_timeout_sec``,
and ``header`` (extra request headers) on a host or a mirror.

containerd's host directory (``[registry] config_path``, see ``hostsdir.py``) gives the
same list of endpoints for the registries it configures. A registry named in
``[resolver.host]`` takes that table and not the directory: the explicit lazypull config
wins, host by host.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazypull.errors import ConfigError, LazypullError
from lazypull.registry.endpoint import Endpoint
from lazypull.registry.hostsdir import load_endpoints

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUESTS_PER_HOST = 16


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
    hosts_dir: Path | None = None  # containerd's config_path (hosts.toml per registry)
    max_requests_per_host: int = DEFAULT_MAX_REQUESTS_PER_HOST  # in flight at once, per process

    @classmethod
    def load(cls, path: Path | None) -> HostsConfig:
        if path is None:
            return cls()
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read registry config {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"registry config {path} is not valid TOML: {e}") from None
        out = cls.from_mapping(data.get("resolver", data))
        out.apply_registry_table(data.get("registry", {}), str(path))
        return out

    def apply_registry_table(self, reg: Any, where: str) -> None:
        """``[registry]``: ``config_path`` and ``max_requests_per_host``."""
        if not isinstance(reg, dict):
            raise ConfigError(f"{where}: [registry] must be a table")
        cp = reg.get("config_path", "")
        if not isinstance(cp, str):
            raise ConfigError(f"{where}: registry.config_path must be a string")
        self.hosts_dir = Path(cp) if cp else None
        n = reg.get("max_requests_per_host", self.max_requests_per_host)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1024:
            raise ConfigError(f"{where}: registry.max_requests_per_host must be an integer in 1..1024, not {n!r}")
        self.max_requests_per_host = n

    @classmethod
    def from_mapping(cls, resolver: dict[str, Any]) -> HostsConfig:
        """Hosts from a ``[resolver]`` table; wrong types are errors naming the key."""
        out = cls()
        hosts = resolver.get("host", {}) if isinstance(resolver, dict) else {}
        if not isinstance(hosts, dict):
            raise LazypullError("registry config: [resolver.host] must be a table of hosts")
        for name, h in hosts.items():
            where = f'resolver.host."{name}"'
            if not isinstance(h, dict):
                raise LazypullError(f"registry config: {where} must be a table")
            _known(h, _HOST_KEYS | {"mirrors"}, where)
            timeout = _get(h, "request_timeout_sec", (int, float), 30.0, where)
            hc = HostConfig(
                plain_http=_get(h, "plain_http", bool, None, where),
                skip_verify=_get(h, "skip_verify", bool, False, where),
                ca=_get(h, "ca", str, None, where),
                headers=_headers(h, where),
                timeout=_positive(float(timeout), f"{where}.request_timeout_sec"),
            )
            mirrors = h.get("mirrors", []) or []
            if not isinstance(mirrors, list):
                raise LazypullError(f"registry config: {where}.mirrors must be an array of tables")
            for i, m in enumerate(mirrors):
                mwhere = f"{where}.mirrors[{i}]"
                if not isinstance(m, dict) or not m.get("host"):
                    raise LazypullError(f"registry config: a mirror of {name!r} has no host")
                _known(m, _HOST_KEYS | {"host", "insecure"}, mwhere)
                plain = _get(m, "plain_http", bool, None, mwhere)
                if plain is None:
                    plain = _get(m, "insecure", bool, False, mwhere)
                mt = _get(m, "request_timeout_sec", (int, float), hc.timeout, mwhere)
                hc.mirrors.append(
                    Endpoint(
                        host=_get(m, "host", str, "", mwhere),
                        plain_http=plain,
                        skip_verify=_get(m, "skip_verify", bool, False, mwhere),
                        ca=_get(m, "ca", str, None, mwhere),
                        headers=tuple(_headers(m, mwhere).items()),
                        is_mirror=True,
                        timeout=_positive(float(mt), f"{mwhere}.request_timeout_sec"),
                    )
                )
            out.hosts[name] = hc
        return out

    def endpoints(self, registry: str, api_host: str) -> list[Endpoint]:
        """Mirrors first (in order), then the registry itself.

        ``[resolver.host]`` for the registry wins; else containerd's host directory; else
        the registry alone."""
        hc = self.hosts.get(registry) or self.hosts.get(api_host)
        from_dir = hc is None and self.hosts_dir is not None
        hc = hc or HostConfig()
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
        if from_dir:
            assert self.hosts_dir is not None
            found = load_endpoints(self.hosts_dir, registry, upstream, skip_verify_all=self.skip_verify_all)
            if found is not None:
                return found
        return [*hc.mirrors, upstream]


_HOST_KEYS = {"plain_http", "skip_verify", "ca", "header", "request_timeout_sec"}


def _known(table: dict[str, Any], known: set[str], where: str) -> None:
    for k in table:
        if k not in known:
            log.warning("registry config: unknown key %s.%s (ignored)", where, k)


def _get(table: dict[str, Any], name: str, types: Any, default: Any, where: str) -> Any:
    if name not in table:
        return default
    v = table[name]
    if not isinstance(v, types) or (types is not bool and isinstance(v, bool)):
        kind = {bool: "a boolean (true/false)", str: "a string"}.get(types, "a number")
        raise LazypullError(f"registry config: {where}.{name} must be {kind}, not {v!r}")
    return v


def _positive(v: float, what: str) -> float:
    if not v > 0:
        raise LazypullError(f"registry config: {what} must be positive, not {v!r}")
    return v


def _headers(table: dict[str, Any], where: str) -> dict[str, str]:
    h = table.get("header") or {}
    if not isinstance(h, dict):
        raise LazypullError(f"registry config: {where}.header must be a table")
    return {str(k): v if isinstance(v, str) else ", ".join(map(str, v)) for k, v in h.items()}
