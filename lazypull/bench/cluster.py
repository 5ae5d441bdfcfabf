"""The cluster workload: N nodes start the same image at the same moment.

A platform team's cost is a deployment scaling out to many nodes at once, through the
registry caches it already runs. Everything runs on this machine, each part in a network
namespace of its own, routed through the host:

* the origin registry behind the shaped link (``--rate``, optional ``--rtt-ms``);
* a zone cache: the distribution registry as a pull-through cache (``proxy: remoteurl``),
  cold at the start of every run, on an unshaped link (it is near the nodes);
* N nodes, each with its own containerd and snapshotter (and layer server).

Modes: ``overlayfs`` (full pull), ``lazypull``, ``reference`` (given its binary), each
``cache`` (containerd's hosts.toml names the cache, for containerd and the snapshotter)
and ``direct``. Reported per run: origin egress, cache egress (interface counters),
p50/p99/max time from pull to the workload's output across nodes, failures.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lazypull.bench.cleanup import remove_node, stop_processes
from lazypull.bench.images import BenchImage, base_tar, build_image
from lazypull.bench.netns import ShapedNet
from lazypull.bench.runner import SNAPSHOTTER, BenchConfig, _interrupt
from lazypull.convert.copy import copy_image
from lazypull.convert.image import ConvertOptions, convert_image
from lazypull.errors import LazypullError
from lazypull.oci.types import Descriptor
from lazypull.polling import wait_for
from lazypull.registry.options import RegistryOptions
from lazypull.registry.stores import open_store

PORT = 5000
FILES = 20
CORPUS_BASE = Path("/var/cache/lazypull/corpus-debootstrap-bookworm-minbase-v1.tar")  # the tests' debootstrap


def _payload(root: Path, scale: float) -> None:
    """FILES files of random base64 text, 2 MiB each at scale 1; the workload reads one."""
    import base64
    import random

    rnd = random.Random(26)
    (root / "data").mkdir(parents=True)
    size = max(4096, int((2 << 20) * scale))
    for i in range(FILES):
        raw = rnd.randbytes(size * 3 // 4)
        (root / "data" / f"file{i:02d}.txt").write_bytes(base64.encodebytes(raw))


IMAGE = BenchImage("cluster", (), ("sh", "-c", "wc -c /data/file03.txt && echo ready"), "ready", _payload)


@dataclass
class ClusterResult:
    mode: str
    via: str
    nodes: int
    start_s: list[float] = field(default_factory=list)
    failures: int = 0
    origin_bytes: int = 0
    origin_requests: int = 0
    cache_bytes: int = 0
    node_bytes: int = 0
    errors: list[str] = field(default_factory=list)

    def quantile(self, q: float) -> float:
        """Nearest rank (p99 of 8 nodes is the slowest)."""
        xs = sorted(self.start_s)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


class _Net:
    """Origin, cache and node namespaces, routed through the host (forwarding on for the run)."""

    def __init__(self, nodes: int, rate: str, rtt_ms: float) -> None:
        tag = os.getpid() % 1000
        self.origin = ShapedNet(name=f"lpo{tag}", rate=rate, subnet=221)
        self.cache = ShapedNet(name=f"lpc{tag}", rate="0", subnet=222)
        self.nodes = [ShapedNet(name=f"lpn{tag}x{i}", rate="0", subnet=223 + i) for i in range(nodes)]
        self.rtt_ms = rtt_ms
        self._forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()

    def __enter__(self) -> _Net:
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        try:
            for n in (self.origin, self.cache, *self.nodes):
                n.create()
                _sh(*n.exec_prefix(), "ip", "route", "add", "default", "via", n.host_ip)
            if self.rtt_ms:  # netem: delay and rate on the origin's link
                if subprocess.run(["modprobe", "sch_netem"], capture_output=True).returncode != 0:
                    raise LazypullError("--rtt-ms needs the kernel's netem qdisc (sch_netem), not available here")
                rate = self.origin.rate if self.origin.rate not in ("", "0") else "10gbit"
                _sh(*self.origin.exec_prefix(), "tc", "qdisc", "replace", "dev", self.origin.ns_if, "root", "netem",
                    "delay", f"{self.rtt_ms:g}ms", "rate", rate)  # fmt: skip
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for n in (self.origin, self.cache, *self.nodes):
            n.destroy()
        Path("/proc/sys/net/ipv4/ip_forward").write_text(self._forward)


def _sh(*cmd: str) -> None:
    res = subprocess.run(list(cmd), capture_output=True, text=True)
    if res.returncode != 0:
        raise LazypullError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")


def _counter(n: ShapedNet, which: str) -> int:
    """rx: bytes the namespace sent out; tx: bytes sent into it."""
    return int(Path(f"/sys/class/net/{n.host_if}/statistics/{which}_bytes").read_text())


class _Registry:
    def __init__(self, net: ShapedNet, root: Path, remote: str = "") -> None:
        shutil.rmtree(root / "storage", ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        cfg: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": False}},  # requests are counted from it
            "storage": {"filesystem": {"rootdirectory": str(root / "storage")}},
            "http": {"addr": f"{net.registry_ip}:{PORT}"},
        }
        if remote:
            cfg["proxy"] = {"remoteurl": remote}
        (root / "config.yml").write_text(json.dumps(cfg))
        self.log_path = root / "registry.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child's
        self.proc = subprocess.Popen(
            [*net.exec_prefix(), "docker-registry", "serve", str(root / "config.yml")],
            stdout=log,  # the access log
            stderr=log,
        )
        self.host = f"{net.registry_ip}:{PORT}"
        import urllib.request

        wait_for(lambda: _answers(urllib.request, self.host), 20, f"registry {self.host}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def requests(self) -> int:
        """HTTP requests answered so far (access log lines)."""
        with open(self.log_path, "rb") as f:
            return sum(1 for line in f if b' HTTP/1.1" ' in line)


def _answers(urllib_request: object, host: str) -> bool:
    try:
        urllib_request.urlopen(f"http://{host}/v2/", timeout=1)  # type: ignore[attr-defined]
        return True
    except OSError:
        return False


class _Node:
    """containerd and the snapshotter in the node's namespace; *hosts_dir* names the cache."""

    def __init__(self, net: ShapedNet, root: Path, mode: str, origin: str, cache: str, cfg: BenchConfig) -> None:
        self.net, self.root, self.mode = net, root, mode
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        self.hosts_dir: Path | None = None
        if cache:
            self.hosts_dir = root / "certs.d"
            d = self.hosts_dir / origin
            d.mkdir(parents=True)
            (d / "hosts.toml").write_text(
                f'server = "http://{origin}"\n[host."http://{cache}"]\ncapabilities = ["pull", "resolve"]\n'
            )
        # The network namespace only: `ip netns exec` also remounts /sys (runc then finds no
        # cgroups) and gives a mount namespace of its own (containerd would not see FUSE mounts).
        ns = self.ns = ["nsenter", f"--net=/run/netns/{net.name}"]
        self.snap: subprocess.Popen[bytes] | None = None
        plugins = ""
        sock = root / "snap.sock"
        if mode == "lazypull":
            conf = f'plain_http_hosts = ["{origin}"]\nno_background_fetch = true\n'
            if self.hosts_dir:
                conf += f'[registry]\nconfig_path = "{self.hosts_dir}"\n'
            (root / "lazypull.toml").write_text(conf)
            cmd = [sys.executable, "-m", "lazypull.service.main", "--address", str(sock), "--root", str(root / "lp")]
            self.snap = self._spawn([*ns, *cmd, "--config", str(root / "lazypull.toml")], "lazypull.log")
            plugins = f'[proxy_plugins.lazypull]\n  type = "snapshot"\n  address = "{sock}"\n'
        elif mode == "reference":
            if not cfg.reference_snapshotter:
                raise LazypullError("mode 'reference' needs --reference-snapshotter PATH")
            mirror = cache or origin
            mirrors = f'[[resolver.host."{origin}".mirrors]]\nhost = "{mirror}"\ninsecure = true\n'
            (root / "stargz.toml").write_text("no_background_fetch = true\n" + mirrors)
            cmd = [cfg.reference_snapshotter, "--address", str(sock), "--root", str(root / "stargz")]
            self.snap = self._spawn([*ns, *cmd, "--config", str(root / "stargz.toml")], "stargz.log")
            plugins = f'[proxy_plugins.stargz]\n  type = "snapshot"\n  address = "{sock}"\n'
        if self.snap is not None:
            wait_for(sock.exists, 60, "snapshotter socket")
        self.address = root / "containerd.sock"
        (root / "containerd.toml").write_text(
            f'version = 2\nroot = "{root / "croot"}"\nstate = "{root / "cstate"}"\n'
            f'[grpc]\n  address = "{self.address}"\n[ttrpc]\n  address = "{self.address}.ttrpc"\n'
            f'[plugins."io.containerd.grpc.v1.cri"]\n  disable_apparmor = true\n{plugins}'
        )
        self.containerd = self._spawn([*ns, "containerd", "--config", str(root / "containerd.toml")], "containerd.log")
        wait_for(lambda: self.address.exists() and self.ctr("version", check=False).returncode == 0, 60, "containerd")

    def _spawn(self, cmd: list[str], log: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.root / log, "wb"))

    def ctr(self, *args: str, tool: str = "ctr", check: bool = True) -> subprocess.CompletedProcess[str]:
        # ctr fetches what it pulls itself: it runs in the node's network namespace too
        cmd = [*self.ns, tool, "--address", str(self.address), "--namespace", "bench", *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if check and res.returncode != 0:
            raise LazypullError(f"{' '.join(args[:3])} failed: {(res.stderr or res.stdout)[-400:]}")
        return res

    def start(self, ref: str) -> float:
        """Pull and run the workload; seconds until it printed."""
        snap = SNAPSHOTTER[self.mode]
        where = ["--hosts-dir", str(self.hosts_dir)] if self.hosts_dir else []
        t0 = time.monotonic()
        if self.mode == "overlayfs":
            self.ctr("images", "pull", "--plain-http", *where, "--snapshotter", snap, ref)
        else:
            self.ctr("image", "rpull", "--plain-http", *where, "--snapshotter", snap, ref, tool="ctr-remote")
        # runc's state is the machine's: one container name per node
        out = self.ctr("run", "--rm", "--snapshotter", snap, ref, self.root.name, *IMAGE.workload)
        if IMAGE.expect not in out.stdout:
            raise LazypullError(f"the workload printed {out.stdout[-200:]!r}")
        return time.monotonic() - t0

    def stop(self) -> None:
        stop_processes(self.containerd, self.snap)
        remove_node(self.root)


def _prepare(cfg: BenchConfig, origin: _Registry, work: Path, modes: list[str]) -> dict[str, str]:
    """The image pushed to origin: as published (full pulls) and as eStargz (lazy modes)."""
    tar = base_tar(work, IMAGE.packages)
    if CORPUS_BASE.exists() and not tar.exists():  # the tests' cached debootstrap tree: no second one
        shutil.copyfile(CORPUS_BASE, tar)
    layout = build_image(IMAGE, work, cfg.scale)
    ropts = RegistryOptions(plain_http=True)
    base = f"{origin.host}/bench/cluster"
    copy_image(layout, open_store(f"{base}:org", ropts, for_push=True), tag="org")
    refs = {"overlayfs": f"{base}:org"}
    if any(m != "overlayfs" for m in modes):
        convert_image(
            open_store(f"{base}:org", ropts),
            open_store(f"{base}:esgz", ropts, for_push=True),
            ConvertOptions(oci=True),
            tag="esgz",
        )
        refs["lazypull"] = refs["reference"] = f"{base}:esgz"
    return refs


def run_cluster(cfg: BenchConfig, nodes: int, vias: list[str], kill_after: float = 1.0) -> list[ClusterResult]:
    """*vias*: ``cache`` (cold), ``cache-warm`` (it holds the image's blobs already: the
    second wave of a rollout), ``direct``, ``cache-killed`` (the cache is killed *kill_after*
    seconds into the run: every node should still start)."""
    if threading.current_thread() is threading.main_thread():  # SIGTERM tears down like Ctrl-C
        signal.signal(signal.SIGTERM, _interrupt)
    work = cfg.workdir.resolve() / "cluster"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    with _Net(nodes, cfg.rate, cfg.rtt_ms) as net:
        origin = _Registry(net.origin, work / "origin")
        try:
            cfg.progress(f"[cluster] origin {origin.host} at {cfg.rate}; building and pushing the image")
            refs = _prepare(cfg, origin, work, cfg.modes)
            for mode in cfg.modes:
                for via in vias:
                    for run in range(1, cfg.runs + 1):
                        r = _one_run(cfg, net, origin, work, mode, via, refs[mode], kill_after)
                        p50, p99 = r.quantile(0.5), r.quantile(0.99)
                        cfg.progress(
                            f"[cluster] {mode:9} {via:6} #{run}: p50 {p50:6.2f}s p99 {p99:6.2f}s"
                            f" max {r.quantile(1):6.2f}s, origin {r.origin_bytes / 1e6:7.1f} MB,"
                            f" cache {r.cache_bytes / 1e6:7.1f} MB, failures {r.failures}"
                        )
                        for e in sorted(set(r.errors))[:3]:
                            cfg.progress(f"[cluster]   failure: {e}")
                        results.append(r)
        finally:
            origin.stop()
    return results


def _one_run(
    cfg: BenchConfig, net: _Net, origin: _Registry, work: Path, mode: str, via: str, ref: str, kill_after: float
) -> ClusterResult:
    res = ClusterResult(mode, via, len(net.nodes))
    cache = _Registry(net.cache, work / "cache", remote=f"http://{origin.host}") if via != "direct" else None
    started: list[_Node] = []
    try:
        for i, n in enumerate(net.nodes):
            started.append(_Node(n, work / f"node{i}", mode, origin.host, cache.host if cache else "", cfg))
        if via == "cache-warm" and cache is not None:
            _warm(cache.host, ref)
        before = (_counter(net.origin, "rx"), _counter(net.cache, "rx"), sum(_counter(n, "tx") for n in net.nodes))
        requests_before = origin.requests()
        gate = threading.Barrier(len(started))
        lock = threading.Lock()

        def go(node: _Node) -> None:
            gate.wait()
            try:
                took = node.start(ref)
                with lock:
                    res.start_s.append(took)
            except Exception as e:  # a failed node is a result, not an abort
                with lock:
                    res.failures += 1
                    res.errors.append(str(e)[-300:])

        threads = [threading.Thread(target=go, args=(n,)) for n in started]
        if via == "cache-killed" and cache is not None:
            threading.Timer(kill_after, cache.proc.kill).start()  # the cache dies mid-pull
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        res.origin_bytes = _counter(net.origin, "rx") - before[0]
        res.origin_requests = origin.requests() - requests_before
        res.cache_bytes = _counter(net.cache, "rx") - before[1]
        res.node_bytes = sum(_counter(n, "tx") for n in net.nodes) - before[2]
    finally:
        for node in started:
            node.stop()
        if cache is not None:
            cache.stop()
    return res


def _warm(cache: str, ref: str) -> None:
    """Read the image's manifest and every blob through the cache (it then holds them)."""
    from lazypull.registry.client import RegistryClient
    from lazypull.registry.reference import Reference

    client = RegistryClient(RegistryOptions(plain_http=True))
    via = Reference.parse(ref.replace(ref.split("/", 1)[0], cache, 1))
    data, _mt, _dg = client.get_manifest(via)
    m = json.loads(data)
    for d in [m["config"], *m["layers"]]:
        with client.open_blob(via, _descriptor(d)) as f:
            while f.read(1 << 20):
                pass


def _descriptor(d: dict[str, object]) -> Descriptor:
    return Descriptor(str(d["mediaType"]), str(d["digest"]), int(str(d["size"])))


def markdown(results: list[ClusterResult]) -> str:
    lines = [
        "| mode | via | nodes | p50 s | p99 s | max s | origin MB | origin requests | cache MB | nodes' MB"
        " | failures |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.mode} | {r.via} | {r.nodes} | {r.quantile(0.5):.2f} | {r.quantile(0.99):.2f} | {r.quantile(1):.2f}"
            f" | {r.origin_bytes / 1e6:.1f} | {r.origin_requests} | {r.cache_bytes / 1e6:.1f}"
            f" | {r.node_bytes / 1e6:.1f} | {r.failures} |"
        )
    return "\n".join(lines) + "\n"
