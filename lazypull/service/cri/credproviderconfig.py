"""The kubelet's ``CredentialProviderConfig`` (``--image-credential-provider-config``).

The daemon reads the very file the kubelet is given, so a node's plugins, their
``matchImages`` and cache durations are configured once. It is validated as the kubelet
validates it (a config the kubelet refuses is refused here, at the daemon's start, rather
than failing later at a mount): ``providers`` not empty, unique names that are plain file
names present and executable in the bin dir, ``matchImages`` given and parseable, a
``defaultCacheDuration`` and a supported request ``apiVersion``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lazypull.errors import ConfigError
from lazypull.service.cri.imagematch import BadPattern, check_pattern

log = logging.getLogger(__name__)

CONFIG_API_VERSIONS = ("kubelet.config.k8s.io/v1", "kubelet.config.k8s.io/v1beta1", "kubelet.config.k8s.io/v1alpha1")
REQUEST_API_VERSIONS = (
    "credentialprovider.kubelet.k8s.io/v1",
    "credentialprovider.kubelet.k8s.io/v1beta1",
    "credentialprovider.kubelet.k8s.io/v1alpha1",
)
_PROVIDER_KEYS = {"name", "matchImages", "defaultCacheDuration", "apiVersion", "args", "env", "tokenAttributes"}

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration (``12h``, ``1m30s``, ``500ms``, ``0``); negative ones are refused."""
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string like '5m', not {text!r}")
    s = text.strip()
    if s.startswith("+"):
        s = s[1:]
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r} (e.g. '30s', '5m', '12h')")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s:
        raise ValueError("empty duration")
    return total


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    match_images: tuple[str, ...]
    default_cache_sec: float
    api_version: str  # of the CredentialProviderRequest/Response
    executable: Path
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # values may be secrets


def load_config(path: Path, bin_dir: Path) -> list[ProviderConfig]:
    """The providers of the kubelet config at *path*, plugins looked up in *bin_dir*."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"credential provider config {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as e:
        raise ConfigError(f"credential provider config {path} is not valid YAML or JSON: {e}") from None
    return parse_config(data, bin_dir, str(path))


def parse_config(data: Any, bin_dir: Path, where: str = "credential provider config") -> list[ProviderConfig]:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: not a CredentialProviderConfig object")
    kind, api = data.get("kind"), data.get("apiVersion")
    if kind != "CredentialProviderConfig":
        raise ConfigError(f"{where}: kind must be CredentialProviderConfig, not {kind!r}")
    if api not in CONFIG_API_VERSIONS:
        raise ConfigError(f"{where}: apiVersion must be one of {', '.join(CONFIG_API_VERSIONS)}, not {api!r}")
    for k in data:
        if k not in ("kind", "apiVersion", "providers"):
            log.warning("%s: unknown key %r (ignored)", where, k)
    raw = data.get("providers")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: at least one provider is required in providers")
    providers = [_provider(p, i, bin_dir, where) for i, p in enumerate(raw)]
    names = [p.name for p in providers]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: duplicate provider names: {', '.join(dup)}")
    return providers


def _provider(p: Any, i: int, bin_dir: Path, where: str) -> ProviderConfig:
    at = f"{where}: providers[{i}]"
    if not isinstance(p, dict):
        raise ConfigError(f"{at} must be an object")
    name = p.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{at}.name is required")
    at = f"{where}: provider {name!r}"
    if "/" in name or "\\" in name or name in (".", "..") or " " in name:
        raise ConfigError(f"{at}: name must be a file name in the bin dir (no path separators, '.', '..' or spaces)")
    for k in p:
        if k not in _PROVIDER_KEYS:
            log.warning("%s: unknown key %r (ignored)", at, k)
    images = p.get("matchImages")
    if not isinstance(images, list) or not images or not all(isinstance(x, str) and x for x in images):
        raise ConfigError(f"{at}: matchImages must be a non-empty list of image patterns")
    for pattern in images:
        try:
            check_pattern(pattern)
        except BadPattern as e:
            raise ConfigError(f"{at}: matchImages: {e}") from None
    if "defaultCacheDuration" not in p:
        raise ConfigError(f"{at}: defaultCacheDuration is required")
    try:
        cache = parse_duration(p["defaultCacheDuration"])
    except ValueError as e:
        raise ConfigError(f"{at}: defaultCacheDuration: {e}") from None
    api = p.get("apiVersion")
    if api not in REQUEST_API_VERSIONS:
        raise ConfigError(f"{at}: apiVersion must be one of {', '.join(REQUEST_API_VERSIONS)}, not {api!r}")
    args = p.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"{at}: args must be a list of strings")
    env: list[tuple[str, str]] = []
    for item in p.get("env") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise ConfigError(f"{at}: env entries need a name and a value")
        env.append((item["name"], str(item.get("value", ""))))
    tokens = p.get("tokenAttributes")
    if tokens is not None and (not isinstance(tokens, dict) or tokens.get("requireServiceAccount", True)):
        # The pod's service account token reaches only the kubelet; no mount here could send it.
        raise ConfigError(
            f"{at}: tokenAttributes with requireServiceAccount is not supported (the daemon has no pod "
            "service account tokens); give the daemon a config without this provider"
        )
    exe = Path(bin_dir) / name
    if not exe.is_file() or not os.access(exe, os.X_OK):
        raise ConfigError(f"{at}: plugin {exe} is missing or not executable")
    return ProviderConfig(name, tuple(images), cache, api, exe, tuple(args), tuple(env))
