"""containerd's registry host directory (``config_path``, e.g. ``/etc/containerd/certs.d``).

A node's mirrors are usually configured there, for containerd: reading the same files lets
lazy chunks come through the same mirrors and caches as containerd's own pulls, with no
second copy of the configuration. The semantics follow containerd's ``hosts.toml``:

* the directory for registry ``HOST[:PORT]`` is the first of ``<dir>/HOST_PORT_``,
  ``<dir>/HOST:PORT`` and ``<dir>/_default`` that exists;
* ``[host."URL"]`` tables are tried in file order, then ``server`` (the registry itself
  when absent: ``registry-1.docker.io`` for ``docker.io``);
* a URL without a scheme is HTTPS; its path gets ``/v2`` appended unless it already ends
  so or ``override_path = true`` (the path is then the API root as written);
* ``capabilities`` (default all): ``resolve`` hosts answer tag lookups, ``pull`` hosts
  manifests and blobs by digest; ``push`` is never used for lazy reads;
* ``ca`` (a path or a list), ``client`` (a path, a list, or a list of [cert, key] pairs),
  ``skip_verify``, ``header`` (string or list values); relative paths are relative to the
  host's directory;
* a directory without ``hosts.toml`` contributes Docker-style certificate files: ``*.crt``
  CAs, ``*.cert`` client certificates with their ``*.key``.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lazypull.errors import ConfigError
from lazypull.registry.endpoint import ALL_CAPABILITIES, Endpoint

log = logging.getLogger(__name__)


def host_dir(root: Path, registry: str) -> Path | None:
    """The directory containerd would use for *registry*, or None."""
    candidates = []
    host, sep, port = registry.rpartition(":")
    if sep and host and port.isdigit():
        candidates.append(root / f"{host}_{port}_")
    candidates += [root / registry, root / "_default"]
    for p in candidates:
        if p.is_dir():
            return p
    return None


def load_endpoints(
    root: Path, registry: str, default_server: Endpoint, *, skip_verify_all: bool = False
) -> list[Endpoint] | None:
    """*registry*'s hosts in the order to try, or None when the directory has nothing for it.

    *default_server* is the registry itself (scheme from the plain-HTTP settings), used
    when ``hosts.toml`` names no ``server``."""
    d = host_dir(root, registry)
    if d is None:
        return None
    f = d / "hosts.toml"
    if not f.is_file():
        return [_cert_files(d, default_server)]
    try:
        data = tomllib.loads(f.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {f}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{f} is not valid TOML: {e}") from None
    hosts = data.get("host", {})
    if not isinstance(hosts, dict):
        raise ConfigError(f"{f}: [host] must be a table of hosts")
    out = []
    for url, table in hosts.items():  # tomllib keeps the file's order
        if not isinstance(table, dict):
            raise ConfigError(f'{f}: host."{url}" must be a table')
        out.append(_endpoint(url, table, d, f'{f}: host."{url}"', mirror=True, skip_verify_all=skip_verify_all))
    server = data.get("server")
    if server is not None and not isinstance(server, str):
        raise ConfigError(f"{f}: server must be a string")
    root_table = {k: v for k, v in data.items() if k not in ("host", "server")}
    if server:
        out.append(_endpoint(server, root_table, d, f"{f}", mirror=False, skip_verify_all=skip_verify_all))
    else:
        out.append(_apply(default_server, root_table, d, f"{f}", skip_verify_all))
    return out


def _endpoint(
    url: str, table: dict[str, Any], base: Path, where: str, *, mirror: bool, skip_verify_all: bool
) -> Endpoint:
    if not url.startswith(("http://", "https://")):
        url = "https://" + url
    u = urlsplit(url)
    if not u.netloc:
        raise ConfigError(f"{where}: {url!r} names no host")
    override = _get(table, "override_path", bool, False, where)
    path = u.path.rstrip("/")
    if path:
        path = str(Path(path))  # containerd cleans the path (path.Clean)
    if not override and not path.endswith("/v2"):
        path += "/v2"
    ep = Endpoint(host=u.netloc, plain_http=u.scheme == "http", path=path, is_mirror=mirror, ns_query=mirror)
    return _apply(ep, table, base, where, skip_verify_all)


def _apply(ep: Endpoint, table: dict[str, Any], base: Path, where: str, skip_verify_all: bool) -> Endpoint:
    known = {"capabilities", "ca", "client", "skip_verify", "header", "override_path"}
    for k in table:
        if k not in known:
            log.warning("%s: unknown key %s (ignored)", where, k)
    caps = _get(table, "capabilities", list, None, where)
    if caps is not None:
        bad = [c for c in caps if not isinstance(c, str) or c.lower() not in ALL_CAPABILITIES]
        if bad:
            raise ConfigError(f"{where}: unknown capability {bad[0]!r} (pull, resolve, push)")
    cas = _paths(table.get("ca"), base, f"{where}.ca")
    pairs = _client_pairs(table.get("client"), base, f"{where}.client")
    if len(pairs) > 1:
        log.warning("%s: %d client certificates; the first one is used", where, len(pairs))
    headers = dict(ep.headers)
    for k, v in (_get(table, "header", dict, {}, where)).items():
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            headers[str(k)] = ", ".join(v)
        elif isinstance(v, str):
            headers[str(k)] = v
        else:
            raise ConfigError(f"{where}.header.{k} must be a string or a list of strings")
    return Endpoint(
        host=ep.host,
        plain_http=ep.plain_http,
        skip_verify=_get(table, "skip_verify", bool, ep.skip_verify, where) or skip_verify_all,
        ca=cas or ep.ca,
        client_cert=pairs[0] if pairs else ep.client_cert,
        headers=tuple(headers.items()),
        is_mirror=ep.is_mirror,
        timeout=ep.timeout,
        path=ep.path,
        capabilities=frozenset(c.lower() for c in caps) if caps is not None else ep.capabilities,
        ns_query=ep.ns_query,
    )


def _cert_files(d: Path, server: Endpoint) -> Endpoint:
    cas = tuple(str(p) for p in sorted(d.glob("*.crt")))
    pairs = []
    for cert in sorted(d.glob("*.cert")):
        key = cert.with_suffix(".key")
        pairs.append((str(cert), str(key) if key.is_file() else ""))
    return Endpoint(
        host=server.host,
        plain_http=server.plain_http,
        skip_verify=server.skip_verify,
        ca=cas or server.ca,
        client_cert=pairs[0] if pairs else server.client_cert,
        headers=server.headers,
        timeout=server.timeout,
    )


def _get(table: dict[str, Any], name: str, t: type, default: Any, where: str) -> Any:
    if name not in table:
        return default
    v = table[name]
    if not isinstance(v, t):
        raise ConfigError(f"{where}.{name} has the wrong type ({type(v).__name__})")
    return v


def _abs(p: str, base: Path) -> str:
    return p if Path(p).is_absolute() else str(base / p)


def _paths(v: Any, base: Path, where: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return (_abs(v, base),)
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return tuple(_abs(x, base) for x in v)
    raise ConfigError(f"{where} must be a path or a list of paths")


def _client_pairs(v: Any, base: Path, where: str) -> list[tuple[str, str]]:
    """containerd's ``client``: "cert+key.pem", ["a.pem", ...] or [["cert", "key"], ...]."""
    if v is None:
        return []
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list):
        raise ConfigError(f"{where} must be a path, a list of paths or a list of [cert, key] pairs")
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((_abs(item, base), ""))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
            out.append((_abs(item[0], base), _abs(item[1], base)))
        else:
            raise ConfigError(f"{where}: {item!r} is not a path or a [cert, key] pair")
    return out
