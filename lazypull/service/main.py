"""The snapshotter daemon: containerd proxy plugin on a unix socket (``containerd-lazypull-grpc``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from lazypull.errors import ConfigError, LazypullError, log_level
from lazypull.registry.client import RegistryClient
from lazypull.registry.hosts import DEFAULT_MAX_REQUESTS_PER_HOST
from lazypull.registry.options import RegistryOptions
from lazypull.service.args import DEFAULT_CONFIG, add_args, status_socket
from lazypull.service.config import DaemonConfig
from lazypull.service.cri.credchain import CredentialChain, Source
from lazypull.service.cri.credprovider import CredentialProviders
from lazypull.service.cri.keychain import Keychain
from lazypull.service.cri.server import add_image_service
from lazypull.service.grpc_service import SnapshotsService
from lazypull.service.notify import raise_fd_limit, sd_notify
from lazypull.service.proto import snapshots_pb2_grpc
from lazypull.service.status import node_status
from lazypull.service.statusapi import serve_status
from lazypull.snapshot.credrenew import start_renewal
from lazypull.snapshot.remote import CredentialSource, LayerResolver
from lazypull.snapshot.snapshotter import RemoteSettings, Snapshotter

log = logging.getLogger("lazypull.daemon")


def build(cfg: DaemonConfig, root: Path, fsd_address: str = "") -> Snapshotter:
    ropts = RegistryOptions(
        docker_config=Path(cfg.docker_config) if cfg.docker_config else None, plain_http_hosts=set(cfg.plain_http_hosts)
    )
    client = RegistryClient(ropts, hosts=cfg.hosts)
    remote = RemoteSettings(
        cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else root / "cache",
        registry={**ropts.to_json(), "registry_config": None},
        prefetch=not cfg.noprefetch,
        background_fetch=not cfg.no_background_fetch,
        prefetch_timeout_sec=cfg.prefetch_timeout_sec,
        fetch_timeout_sec=cfg.fetching_timeout_sec,
        max_retries=cfg.max_retries,
        cache_max_bytes=cfg.cache_max_bytes,
        record_access=cfg.record_access,
        passthrough=cfg.passthrough,
        min_fetch=cfg.min_fetch_bytes,
        fsd_address=Path(fsd_address) if fsd_address else None,
        memory_bytes=cfg.cache_memory_bytes,
        index_memory_bytes=cfg.index_memory_bytes,
        image_index_memory_bytes=cfg.image_index_memory_bytes,
        profile_budget=cfg.profile_budget_bytes,
        profile_timeout_sec=cfg.profile_timeout_sec,
    )
    if cfg.resolver_raw or cfg.registry_config_path or cfg.max_requests_per_host != DEFAULT_MAX_REQUESTS_PER_HOST:
        # The layer server reads the same hosts config; hand it over as a file next to the state.
        hosts_file = root / "resolver.toml"
        registry = f"[registry]\nconfig_path = {_tv(cfg.registry_config_path)}\n"
        registry += f"max_requests_per_host = {cfg.max_requests_per_host}\n"
        hosts_file.write_text(registry + _toml_resolver(cfg.resolver_raw))
        os.chmod(hosts_file, 0o600)
        remote.registry["registry_config"] = str(hosts_file)
    resolver = LayerResolver(
        client,
        credential_source(cfg),
        timeout=cfg.resolve_timeout_sec,
        failure_ttl=cfg.resolve_failure_ttl_sec,
    )
    return Snapshotter(root, resolver, remote)


def credential_source(cfg: DaemonConfig) -> CredentialSource | None:
    """The lazy mounts' own credentials: the CRI keychain's, then the credential providers';
    without either, the registry client's (docker config, anonymous) only."""
    sources: list[Source] = []
    if cfg.enable_keychain:
        sources.append(Keychain())
    if cfg.credential_provider_config:
        sources.append(
            CredentialProviders.load(
                Path(cfg.credential_provider_config),
                Path(cfg.credential_provider_bin_dir),
                cfg.credential_provider_timeout_sec,
            )
        )
    if not sources:
        return None
    return sources[0] if len(sources) == 1 else CredentialChain(sources)


def _toml_resolver(resolver: dict[str, object]) -> str:
    lines: list[str] = []
    hosts = resolver.get("host", {}) or {}
    assert isinstance(hosts, dict)
    for name, h in hosts.items():
        lines.append(f"[resolver.host.{_tv(name)}]")
        lines += [f"{k} = {_tv(v)}" for k, v in h.items() if k != "mirrors"]
        for m in h.get("mirrors", []) or []:
            lines.append(f"[[resolver.host.{_tv(name)}.mirrors]]")
            lines += [f"{k} = {_tv(v)}" for k, v in m.items()]
    return "\n".join(lines) + "\n"


def _tv(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, dict):  # header = { "X-Name" = "value" }
        return "{ " + ", ".join(f"{_tv(str(k))} = {_tv(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_tv(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def load_config(args: argparse.Namespace) -> DaemonConfig:
    """The config named by --config (which must exist), else the default file if present."""
    if args.log_level:
        log_level(args.log_level)
    if args.config and not Path(args.config).is_file():
        raise ConfigError(f"--config {args.config}: no such file")
    return DaemonConfig.load(Path(args.config or DEFAULT_CONFIG))


def serve(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level or cfg.log_level or "info").upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # `lazypull snapshotter`: the CLI's warning-level set-up is not the daemon's
    )
    raise_fd_limit()  # one held /dev/fuse fd per lazily mounted layer
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    sn = build(cfg, root, args.fsd_address)
    if cfg.metrics_address:  # first: a busy port must fail before the socket exists
        _start_metrics(cfg.metrics_address, sn)
    sn.restore()
    if cfg.credential_provider_config and cfg.credential_renew_interval_sec > 0 and sn.resolver is not None:
        assert sn.resolver.keychain is not None
        start_renewal(sn.layers, sn.resolver.keychain, cfg.credential_renew_interval_sec)
    sock = Path(args.address)
    sock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock.unlink(missing_ok=True)
    # The status socket first: once containerd's socket shows, the daemon answers on both.
    status_path = status_socket(sock)
    try:
        status = serve_status(status_path, lambda: node_status(sn))  # `lazypull status`
    except OSError as e:  # the node runs without it; containerd's socket is what matters
        log.error("cannot serve the status on %s: %s", status_path, e.strerror or e)
        status = None
    server = grpc.server(ThreadPoolExecutor(max_workers=16, thread_name_prefix="grpc"))
    snapshots_pb2_grpc.add_SnapshotsServicer_to_server(SnapshotsService(sn), server)
    if cfg.enable_keychain:  # the kubelet's --image-service-endpoint (CRI), beside the snapshots API
        add_image_service(server, sn, cfg.image_service_path, cfg.prefetch_timeout_sec)
    old = os.umask(0o177)  # the socket is created 0600
    try:
        server.add_insecure_port(f"unix://{sock}")
        server.start()
    finally:
        os.umask(old)
    os.chmod(sock, 0o600)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sd_notify("READY=1")
    log.info("serving containerd snapshots API on %s (root %s)", sock, root)
    stop.wait()
    sd_notify("STOPPING=1")
    stop_layers = getattr(args, "stop_layers", False)
    log.info("shutting down; %s", "stopping the layer server" if stop_layers else "lazily mounted layers keep serving")
    server.stop(grace=5).wait()
    if status is not None:
        status.shutdown()
        status_path.unlink(missing_ok=True)
    sn.close()
    if stop_layers:
        if sn.layers.stop_server():
            log.info("layer server stopped, its layers unmounted")
        else:
            log.info("the layer server was running before this snapshotter: left running")
    return 0


def _start_metrics(address: str, sn: Snapshotter) -> None:
    from prometheus_client import REGISTRY, start_http_server

    from lazypull.service.metrics import LayerStatsCollector

    host, _, port = address.rpartition(":")
    try:
        start_http_server(int(port), addr=host or "127.0.0.1")
    except OSError as e:
        raise LazypullError(f"cannot serve metrics on {address} (metrics_address): {e.strerror or e}") from None
    REGISTRY.register(LayerStatsCollector(sn))
    log.info("metrics on http://%s/metrics", address)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="containerd-lazypull-grpc", description=__doc__)
    add_args(p)
    args = p.parse_args(argv)
    try:
        return serve(args)
    except ConfigError as e:
        print(f"containerd-lazypull-grpc: error: {e}", file=sys.stderr)
        return 2
    except LazypullError as e:
        print(f"containerd-lazypull-grpc: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
