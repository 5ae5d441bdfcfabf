"""The daemon's TOML config. Keys the reference snapshotter has keep its names and
meanings, so its configs carry over; unknown keys are reported, never silently ignored."""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazypull.errors import LazypullError
from lazypull.fs.fetcher import MIN_FETCH
from lazypull.registry.hosts import HostsConfig

log = logging.getLogger(__name__)

_KNOWN = {
    "noprefetch",
    "prefetch_timeout_sec",
    "no_background_fetch",
    "metrics_address",
    "blob",
    "resolver",
    "docker_config",
    "cache",
    "plain_http_hosts",
    "fuse_threads",
    "log_level",
    "cri_keychain",
}
_KNOWN_BLOB = {"fetching_timeout_sec", "max_retries", "min_fetch_bytes"}
_KNOWN_CACHE = {"dir", "max_bytes"}
_KNOWN_CRI = {"enable_keychain", "image_service_path"}


@dataclass
class DaemonConfig:
    noprefetch: bool = False
    prefetch_timeout_sec: float = 10.0
    no_background_fetch: bool = False
    metrics_address: str = ""
    fetching_timeout_sec: float = 300.0
    max_retries: int = 5
    min_fetch_bytes: int = MIN_FETCH  # a miss fetches at least this much of the blob
    docker_config: str = ""
    cache_dir: str = ""  # default: ROOT/cache
    cache_max_bytes: int = 10 << 30
    plain_http_hosts: list[str] = field(default_factory=list)
    passthrough: bool = False  # FUSE passthrough for fully cached files
    record_access: bool = False  # mount processes write the files containers read (optimize)
    hosts: HostsConfig = field(default_factory=HostsConfig)
    resolver_raw: dict[str, Any] = field(default_factory=dict)
    enable_keychain: bool = False  # [cri_keychain]: serve the CRI image service, keep PullImage credentials
    image_service_path: str = "/run/containerd/containerd.sock"  # containerd's CRI socket

    @classmethod
    def load(cls, path: Path | None) -> DaemonConfig:
        if path is None or not Path(path).exists():
            return cls()
        try:
            data = tomllib.loads(Path(path).read_text())
        except tomllib.TOMLDecodeError as e:
            raise LazypullError(f"config {path} is not valid TOML: {e}") from None
        return cls.from_mapping(data, str(path))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: str = "config") -> DaemonConfig:
        for k in data:
            if k not in _KNOWN:
                log.warning("%s: unknown key %r (ignored)", where, k)
        blob = data.get("blob", {}) or {}
        cache = data.get("cache", {}) or {}
        for k in blob:
            if k not in _KNOWN_BLOB:
                log.warning("%s: unknown key blob.%s (ignored)", where, k)
        for k in cache:
            if k not in _KNOWN_CACHE:
                log.warning("%s: unknown key cache.%s (ignored)", where, k)
        resolver = data.get("resolver", {}) or {}
        cri = data.get("cri_keychain", {}) or {}
        for k in cri:
            if k not in _KNOWN_CRI:
                log.warning("%s: unknown key cri_keychain.%s (ignored)", where, k)
        return cls(
            noprefetch=bool(data.get("noprefetch", False)),
            prefetch_timeout_sec=float(data.get("prefetch_timeout_sec", 10)),
            no_background_fetch=bool(data.get("no_background_fetch", False)),
            metrics_address=str(data.get("metrics_address", "")),
            fetching_timeout_sec=float(blob.get("fetching_timeout_sec", 300)),
            max_retries=int(blob.get("max_retries", 5)),
            min_fetch_bytes=int(blob.get("min_fetch_bytes", MIN_FETCH)),
            docker_config=str(data.get("docker_config", "")),
            cache_dir=str(cache.get("dir", "")),
            cache_max_bytes=int(cache.get("max_bytes", 10 << 30)),
            plain_http_hosts=list(data.get("plain_http_hosts", [])),
            record_access=bool(data.get("record_access", False)),
            passthrough=bool(data.get("passthrough", False)),
            hosts=HostsConfig.from_mapping(resolver),
            resolver_raw=resolver,
            enable_keychain=bool(cri.get("enable_keychain", False)),
            image_service_path=str(cri.get("image_service_path", "/run/containerd/containerd.sock")),
        )
