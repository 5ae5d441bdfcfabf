"""The daemon's TOML config. Keys the reference snapshotter has keep its names and
meanings, so its configs carry over.

One declarative schema: every key is a field of :class:`DaemonConfig` declared with
:func:`key` (its TOML path, type from the annotation, range). Loading is strict: a value
of the wrong TOML type (``passthrough = "false"`` is a string, not a boolean) or out of
range is a :class:`ConfigError` naming the key; unknown keys are reported, never
silently ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazypull.errors import LOG_LEVELS, ConfigError, LazypullError
from lazypull.fs.fetcher import MIN_FETCH
from lazypull.registry.hosts import DEFAULT_MAX_REQUESTS_PER_HOST, HostsConfig

log = logging.getLogger(__name__)


def key(
    path: str, default: Any, *, min: float | None = None, max: float | None = None, choices: tuple[str, ...] = ()
) -> Any:
    """A config field read from TOML key *path* ("table.name" for keys in a table)."""
    meta = {"key": path, "min": min, "max": max, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DaemonConfig:
    noprefetch: bool = key("noprefetch", False)
    prefetch_timeout_sec: float = key("prefetch_timeout_sec", 10.0, min=0)
    no_background_fetch: bool = key("no_background_fetch", False)
    metrics_address: str = key("metrics_address", "")  # HOST:PORT, empty: no metrics
    log_level: str = key("log_level", "", choices=LOG_LEVELS)  # --log-level wins
    docker_config: str = key("docker_config", "")
    plain_http_hosts: list[str] = key("plain_http_hosts", [])  # noqa: RUF009 - a field()
    passthrough: bool = key("passthrough", False)  # FUSE passthrough for fully cached files
    record_access: bool = key("record_access", False)  # mount processes write the files containers read
    # [blob]: fetching layer contents (the reference's defaults: 300 s, 5 retries)
    fetching_timeout_sec: float = key("blob.fetching_timeout_sec", 300.0, min=0.1)  # one deadline per fetch
    max_retries: int = key("blob.max_retries", 5, min=0, max=100)
    min_fetch_bytes: int = key("blob.min_fetch_bytes", MIN_FETCH, min=0, max=1 << 30)  # a miss fetches at least this
    # [cache]
    cache_dir: str = key("cache.dir", "")  # default: ROOT/cache
    cache_max_bytes: int = key("cache.max_bytes", 10 << 30, min=0)
    cache_memory_bytes: int = key("cache.memory_bytes", 64 << 20, min=0)  # the layer server's, shared by all layers
    # memory of layers whose indexes are being parsed and built (0: 1/8 of the node's, 1-4 GB) ...
    index_memory_bytes: int = key("cache.index_memory_bytes", 0, min=0)
    image_index_memory_bytes: int = key("cache.image_index_memory_bytes", 0, min=0)  # ... one image's (0: half)
    # [resolver]: which layers can be mounted lazily (manifest lookups), and registry hosts
    resolve_timeout_sec: float = key("resolver.timeout_sec", 10.0, min=0.1, max=3600)  # one deadline per lookup
    resolve_failure_ttl_sec: float = key("resolver.failure_ttl_sec", 30.0, min=0, max=86400)  # failures cached
    # [prefetch_profile]: prefetch learned from real runs (lazypull profile), published beside images
    profile_budget_bytes: int = key("prefetch_profile.budget_bytes", 256 << 20, min=0)  # per image; 0: off
    profile_timeout_sec: float = key("prefetch_profile.timeout_sec", 3.0, min=0.1, max=600)  # its lookup
    # [cri_keychain]: serve the kubelet's CRI image service, keep PullImage credentials in memory
    enable_keychain: bool = key("cri_keychain.enable_keychain", False)
    image_service_path: str = key("cri_keychain.image_service_path", "/run/containerd/containerd.sock")  # CRI socket
    # [credential_providers]: the kubelet's exec credential provider plugins, asked after the CRI keychain
    credential_provider_config: str = key("credential_providers.config", "")  # --image-credential-provider-config
    credential_provider_bin_dir: str = key("credential_providers.bin_dir", "")  # --image-credential-provider-bin-dir
    credential_provider_timeout_sec: float = key("credential_providers.timeout_sec", 10.0, min=0.1, max=600)
    # how often served layers are checked for rotated credentials (0: never; they keep their mount's)
    credential_renew_interval_sec: float = key("credential_providers.renew_interval_sec", 60.0, min=0, max=86400)
    # [registry]: containerd's host directory (hosts.toml per registry: mirrors, TLS, headers),
    # as containerd's CRI config names it; a registry in [resolver.host] takes that table instead
    registry_config_path: str = key("registry.config_path", "")
    max_requests_per_host: int = key("registry.max_requests_per_host", DEFAULT_MAX_REQUESTS_PER_HOST, min=1, max=1024)
    hosts: HostsConfig = field(default_factory=HostsConfig)  # [resolver.host."NAME"] tables
    resolver_raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None) -> DaemonConfig:
        if path is None or not Path(path).exists():
            return cls()
        try:
            data = tomllib.loads(Path(path).read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config {path} is not valid TOML: {e}") from None
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
        return cls.from_mapping(data, str(path))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: str = "config") -> DaemonConfig:
        hints = typing.get_type_hints(cls)
        fields = {f.metadata["key"]: f for f in dataclasses.fields(cls) if "key" in f.metadata}
        tables = {k.split(".", 1)[0] for k in fields if "." in k}
        _warn_unknown(data, fields, tables | {"resolver"}, where)
        values: dict[str, Any] = {}
        for path, f in fields.items():
            table, _, name = path.rpartition(".")
            src = data
            if table:
                src = data.get(table, {})
                if not isinstance(src, dict):
                    raise ConfigError(f"{where}: [{table}] must be a table")
            if name in src:
                values[f.name] = _check(path, src[name], hints[f.name], f.metadata, where)
        resolver = data.get("resolver", {})
        if not isinstance(resolver, dict):
            raise ConfigError(f"{where}: [resolver] must be a table")
        try:
            hosts = HostsConfig.from_mapping(resolver)
        except LazypullError as e:
            raise ConfigError(f"{where}: {str(e).removeprefix('registry config: ')}") from None
        if values.get("credential_provider_config") and not values.get("credential_provider_bin_dir"):
            raise ConfigError(f"{where}: credential_providers.bin_dir is required with credential_providers.config")
        if values.get("registry_config_path"):
            hosts.hosts_dir = Path(values["registry_config_path"])
        hosts.max_requests_per_host = values.get("max_requests_per_host", DEFAULT_MAX_REQUESTS_PER_HOST)
        return cls(**values, hosts=hosts, resolver_raw=resolver)


def _warn_unknown(data: dict[str, Any], fields: dict[str, Any], tables: set[str], where: str) -> None:
    for k, v in data.items():
        if k in tables:
            for sub in v if isinstance(v, dict) else ():
                if f"{k}.{sub}" not in fields and not (k == "resolver" and sub == "host"):
                    log.warning("%s: unknown key %s.%s (ignored)", where, k, sub)
        elif k not in fields:
            log.warning("%s: unknown key %r (ignored)", where, k)


def _type_name(t: Any) -> str:
    return {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}.get(
        t, "a list of strings"
    )


def _check(path: str, value: Any, t: Any, meta: Any, where: str) -> Any:
    """*value* if it has type *t* and lies in the field's range; else a ConfigError naming *path*."""
    ok: bool
    if t is bool:
        ok = isinstance(value, bool)
    elif t is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif t is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif t is str:
        ok = isinstance(value, str)
    else:  # list[str]
        ok = isinstance(value, list) and all(isinstance(x, str) for x in value)
    if not ok:
        raise ConfigError(f"{where}: {path} must be {_type_name(t)}, not {_toml_repr(value)}")
    lo, hi, choices = meta["min"], meta["max"], meta["choices"]
    if lo is not None and value < lo:
        raise ConfigError(f"{where}: {path} must be at least {lo:g}, not {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"{where}: {path} must be at most {hi:g}, not {value!r}")
    if choices and value not in choices:
        raise ConfigError(f"{where}: {path} must be one of {', '.join(choices)}, not {value!r}")
    if path == "metrics_address" and value:
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{where}: metrics_address must be HOST:PORT, not {value!r}")
    return value


def _toml_repr(v: Any) -> str:
    if isinstance(v, str):
        return f"the string {v!r}"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)
