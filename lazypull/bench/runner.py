"""Run the benchmark: images x modes x runs, each run from cold caches.

Each run gets a fresh containerd (new root: no content, no snapshots) and, for lazy
modes, a fresh snapshotter root. Timings follow HelloBench: pull, create, and run
until the workload's output has appeared. Bytes are what the node received from the
registry's namespace during the run.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from lazypull.bench import learned
from lazypull.bench.cleanup import remove_node, stop_processes
from lazypull.bench.delayproxy import DelayProxy
from lazypull.bench.images import IMAGES, BenchImage, build_image
from lazypull.bench.netns import ShapedNet
from lazypull.convert.copy import copy_image
from lazypull.convert.image import ConvertOptions, convert_image
from lazypull.errors import LazypullError
from lazypull.optimize.optimizer import OptimizeOptions, optimize_image, write_record
from lazypull.polling import wait_for
from lazypull.prefetch.profile import Profile
from lazypull.registry.options import RegistryOptions
from lazypull.registry.stores import open_store

log = logging.getLogger(__name__)
MODES = (
    "overlayfs",
    "lazypull",
    "lazypull-opt",
    "lazypull-learned",
    "lazypull-soci",
    "reference",
    "cri",
    "podman",
    "podman-lazypull",
)
SNAPSHOTTER = {
    "overlayfs": "overlayfs",
    "lazypull": "lazypull",
    "lazypull-opt": "lazypull",
    "lazypull-learned": "lazypull",  # the lazypull image plus a published prefetch profile
    "lazypull-soci": "lazypull",  # the unconverted image plus a SOCI index
    "reference": "stargz",
}
# "cri": the image as a Kubernetes pod over CRI, pulled with credentials (lazypull.bench.cri)
# "podman", "podman-lazypull": podman, a full pull or through lazypull store (lazypull.bench.podman)


@dataclass
class RunResult:
    image: str
    mode: str
    run: int
    pull_s: float
    create_s: float
    run_s: float
    bytes: int

    @property
    def total_s(self) -> float:
        return self.pull_s + self.create_s + self.run_s


@dataclass
class BenchConfig:
    images: list[str]
    modes: list[str]
    runs: int = 3
    rate: str = "150mbit"
    scale: float = 1.0
    workdir: Path = Path("bench/work")
    reference_snapshotter: str | None = None
    background_fetch: bool = False
    soci_span_size: int = 4 << 20  # lazypull-soci: uncompressed bytes between checkpoints
    rtt_ms: float = 0.0
    progress: Callable[[str], None] = field(default=lambda m: print(m, file=sys.stderr, flush=True))


class Registry:
    """docker-registry inside the shaped namespace."""

    def __init__(self, net: ShapedNet, root: Path) -> None:
        self.net = net
        root.mkdir(parents=True, exist_ok=True)
        cfg = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(root / "storage")}, "delete": {"enabled": True}},
            "http": {"addr": f"{net.registry_ip}:5000"},
        }
        (root / "config.yml").write_text(json.dumps(cfg))
        self.proc = subprocess.Popen(
            [*net.exec_prefix(), "docker-registry", "serve", str(root / "config.yml")],
            stdout=subprocess.DEVNULL,
            stderr=_logfile(root / "registry.log"),
        )
        deadline = time.monotonic() + 20
        import urllib.request

        while True:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise LazypullError("the benchmark registry did not start") from None
                time.sleep(0.1)

    @property
    def host(self) -> str:
        return f"{self.net.registry_ip}:5000"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Node:
    """containerd plus (for lazy modes) a snapshotter daemon, all under one fresh directory."""

    def __init__(self, root: Path, mode: str, registry_host: str, cfg: BenchConfig) -> None:
        self.root = root
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        self.mode = mode
        self.snap_proc: subprocess.Popen[bytes] | None = None
        plugins = ""
        if mode.startswith("lazypull"):
            sock = root / "lazypull.sock"
            (root / "lazypull.toml").write_text(
                f'plain_http_hosts = ["{registry_host}"]\n'
                f"no_background_fetch = {str(not cfg.background_fetch).lower()}\n"
                + ("" if mode == learned.MODE else learned.NO_PROFILES)
            )
            self.snap_proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lazypull.service.main",
                    "--address",
                    str(sock),
                    "--root",
                    str(root / "lazypull"),
                    "--config",
                    str(root / "lazypull.toml"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=_logfile(root / "lazypull.log"),
            )
            plugins = f'[proxy_plugins.lazypull]\n  type = "snapshot"\n  address = "{sock}"\n'
        elif mode == "reference":
            if not cfg.reference_snapshotter:
                raise LazypullError("mode 'reference' needs --reference-snapshotter PATH")
            sock = root / "stargz.sock"
            (root / "stargz.toml").write_text(  # top-level keys first, then the tables
                f"no_background_fetch = {str(not cfg.background_fetch).lower()}\n"
                f'[[resolver.host."{registry_host}".mirrors]]\nhost = "{registry_host}"\ninsecure = true\n'
            )
            self.snap_proc = subprocess.Popen(
                [
                    cfg.reference_snapshotter,
                    "--address",
                    str(sock),
                    "--root",
                    str(root / "stargz"),
                    "--config",
                    str(root / "stargz.toml"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=_logfile(root / "stargz.log"),
            )
            plugins = f'[proxy_plugins.stargz]\n  type = "snapshot"\n  address = "{sock}"\n'
        if self.snap_proc is not None:
            wait_for(lambda: sock.exists(), 30, "snapshotter socket")
        self.address = root / "containerd.sock"
        (root / "containerd.toml").write_text(
            f'version = 2\nroot = "{root / "croot"}"\nstate = "{root / "cstate"}"\n'
            f'[grpc]\n  address = "{self.address}"\n'
            f'[ttrpc]\n  address = "{self.address}.ttrpc"\n[plugins."io.containerd.grpc.v1.cri"]\n'
            f"  disable_apparmor = true\n{plugins}"
        )
        self.containerd = subprocess.Popen(
            ["containerd", "--config", str(root / "containerd.toml")],
            stdout=subprocess.DEVNULL,
            stderr=_logfile(root / "containerd.log"),
        )
        wait_for(lambda: self.address.exists() and self.ctr("version", check=False).returncode == 0, 30, "containerd")

    def ctr(self, *args: str, tool: str = "ctr", check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [tool, "--address", str(self.address), "--namespace", "bench", *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if check and res.returncode != 0:
            raise LazypullError(f"{' '.join(cmd[3:8])} failed: {(res.stderr or res.stdout)[-800:]}")
        return res

    def stop(self) -> None:
        tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
        for t in tasks:
            self.ctr("tasks", "kill", "-s", "KILL", t, check=False)
            self.ctr("tasks", "delete", "-f", t, check=False)
        stop_processes(self.containerd, self.snap_proc)
        remove_node(self.root)


def _logfile(path: Path) -> BinaryIO:
    """A log file handed to a child process (the child owns it from then on)."""
    return open(path, "wb")


def one_run(node: Node, net: ShapedNet, img: BenchImage, ref: str, mode: str, run: int) -> RunResult:
    snap = SNAPSHOTTER[mode]
    before = net.rx_bytes()
    t0 = time.monotonic()
    if mode == "overlayfs":
        node.ctr("images", "pull", "--plain-http", "--snapshotter", snap, ref)
    else:
        node.ctr("image", "rpull", "--plain-http", "--snapshotter", snap, ref, tool="ctr-remote")
    t1 = time.monotonic()
    cid = f"bench-{run}"
    node.ctr("containers", "create", "--snapshotter", snap, ref, cid, "--", *img.workload)
    t2 = time.monotonic()
    out = node.ctr("tasks", "start", cid)
    t3 = time.monotonic()
    if img.expect not in out.stdout:
        raise LazypullError(f"{img.name}/{mode}: workload printed {out.stdout[-200:]!r}, expected {img.expect!r}")
    node.ctr("containers", "delete", cid, check=False)
    return RunResult(img.name, mode, run, t1 - t0, t2 - t1, t3 - t2, net.rx_bytes() - before)


def prepare_images(
    cfg: BenchConfig, reg: Registry, work: Path, net: ShapedNet, profiles: dict[str, Profile] | None = None
) -> dict[tuple[str, str], str]:
    """Push each image in its forms; returns (image, mode) -> reference. *profiles* gets each
    image's recorded profile (mode lazypull-learned), published before that image's runs."""
    ropts = RegistryOptions(plain_http=True)
    refs: dict[tuple[str, str], str] = {}
    built: dict[str, tuple[str, str]] = {}  # build name -> (org ref, esgz ref)
    for name in cfg.images:
        img = IMAGES[name]
        base = f"{reg.host}/bench/{img.build_name}"
        if img.build_name not in built:
            cfg.progress(f"[images] building {img.build_name} (scale {cfg.scale:g})")
            layout = build_image(img, work, cfg.scale)
            copy_image(layout, open_store(f"{base}:org", ropts, for_push=True), tag="org")
            if any(
                m.startswith(("lazypull", "reference", "cri", "podman-")) and m != "lazypull-soci" for m in cfg.modes
            ):
                cfg.progress(f"[images] converting {img.build_name} to eStargz")
                t0 = time.monotonic()
                convert_image(
                    open_store(f"{base}:org", ropts),
                    open_store(f"{base}:esgz", ropts, for_push=True),
                    ConvertOptions(oci=True),
                    tag="esgz",
                )
                cfg.progress(f"[images] converted in {time.monotonic() - t0:.1f}s")
            built[img.build_name] = (f"{base}:org", f"{base}:esgz")
        org, esgz = built[img.build_name]
        if "lazypull-soci" in cfg.modes and (name, "lazypull-soci") not in refs:
            refs.update(_soci_index(cfg, img, org))
        refs[(name, "overlayfs")] = refs[(name, "podman")] = org
        refs[(name, "podman-lazypull")] = esgz
        refs[(name, "lazypull")] = refs[(name, "reference")] = refs[(name, "cri")] = esgz
        if learned.MODE in cfg.modes and profiles is not None:
            cfg.progress(f"[images] recording a prefetch profile of {name} (lazypull profile record)")
            t0 = time.monotonic()
            profiles[name] = learned.record(img, esgz, work / "optimize")
            cfg.progress(f"[images] recorded in {time.monotonic() - t0:.1f}s ({profiles[name].file_count} files)")
            refs[(name, learned.MODE)] = esgz
        if "lazypull-opt" in cfg.modes:
            cfg.progress(f"[images] optimizing {name} for its workload (lazypull optimize)")
            opt = f"{reg.host}/bench/{name}:esgz-opt"  # per workload: the record differs
            t0 = time.monotonic()
            res = optimize_image(
                open_store(org, ropts),
                open_store(opt, ropts, for_push=True),
                OptimizeOptions(
                    convert=ConvertOptions(oci=True),
                    entrypoint=list(img.workload),
                    period=120,
                    workdir=work / "optimize",
                ),
                tag="esgz-opt",
            )
            write_record(work / f"{name}-{cfg.scale:g}.record.jsonl", res.record)
            cfg.progress(f"[images] optimized in {time.monotonic() - t0:.1f}s ({len(res.record)} files prioritized)")
            refs[(name, "lazypull-opt")] = opt
    return refs


def _soci_index(cfg: BenchConfig, img: BenchImage, org: str) -> dict[tuple[str, str], str]:
    """A SOCI index beside the published image: every gzip layer gets a zTOC, since
    containerd's unpacker pulls all layers above one it must fetch. Made on every run (the
    same options give the same bytes; the newest index is the one mounts use)."""
    from lazypull.registry.repository import RegistryStore
    from lazypull.soci.create import create_index

    store = RegistryStore.open(org, RegistryOptions(plain_http=True))
    cfg.progress(f"[images] SOCI index for {img.build_name} (lazypull soci create)")
    t0 = time.monotonic()
    create_index(store, span_size=cfg.soci_span_size, min_layer_size=0)
    cfg.progress(f"[images] indexed in {time.monotonic() - t0:.1f}s")
    return {(n, "lazypull-soci"): org for n, i in IMAGES.items() if i.build_name == img.build_name}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM tears down like Ctrl-C: through the finally blocks


@contextlib.contextmanager
def bench_registry(cfg: BenchConfig) -> Iterator[tuple[ShapedNet, Registry]]:
    """The shaped network namespace with the registry in it, torn down on exit (also on Ctrl-C/SIGTERM)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    work = cfg.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    net = ShapedNet(rate=cfg.rate)
    reg: Registry | None = None
    try:
        net.create()
        cfg.progress(f"[net] registry namespace {net.name}, {net.registry_ip}, egress shaped to {cfg.rate}")
        reg = Registry(net, work / "registry")
        yield net, reg
    finally:
        if reg is not None:
            reg.stop()
        net.destroy()


def run_bench(cfg: BenchConfig) -> list[RunResult]:
    work = cfg.workdir.resolve()
    results: list[RunResult] = []
    delay: DelayProxy | None = None
    stack: list[Callable[[], None]] = []
    with bench_registry(cfg) as (net, reg):
        try:
            profiles: dict[str, Profile] = {}
            refs = prepare_images(cfg, reg, work, net, profiles)
            if cfg.rtt_ms:
                delay = DelayProxy(net.host_ip, (net.registry_ip, 5000), cfg.rtt_ms).start()
                cfg.progress(f"[net] adding {cfg.rtt_ms:g} ms round-trip time via {delay.address}")
                refs = {k: v.replace(reg.host, delay.address, 1) for k, v in refs.items()}
                pull_host = delay.address
            else:
                pull_host = reg.host
            if "cri" in cfg.modes:
                from lazypull.bench import cri

                auth, pause = cri.prepare(net, reg.host, work / "registry", work)
                stack.append(auth.stop)
            for name in cfg.images:
                if name in profiles:
                    learned.publish(refs[(name, learned.MODE)], profiles[name])
                # The modes take turns, so a machine whose speed drifts during the bench (a shared
                # host) weighs on each mode alike instead of on whichever ran last.
                for run, mode in itertools.product(range(1, cfg.runs + 1), cfg.modes):
                    cfg.progress(f"[run] {name:12} {mode:13} #{run}: pulling and starting the container")
                    if mode == "cri":
                        ref, img, bg = refs[(name, mode)], IMAGES[name], cfg.background_fetch
                        p, c, x, n = cri.cri_run(work / "node", net, auth, pause, img, ref, run, bg)
                        r = RunResult(name, mode, run, p, c, x, n)
                    elif mode.startswith("podman"):
                        from lazypull.bench.podman import podman_run

                        ref, img, bg = refs[(name, mode)], IMAGES[name], cfg.background_fetch
                        p, c, x, n = podman_run(work / "node", net, img, ref, mode, run, pull_host, bg)
                        r = RunResult(name, mode, run, p, c, x, n)
                    else:
                        node = Node(work / "node", mode, pull_host, cfg)
                        try:
                            r = one_run(node, net, IMAGES[name], refs[(name, mode)], mode, run)
                        finally:
                            node.stop()
                    cfg.progress(
                        f"[run] {name:12} {mode:13} #{run}: pull {r.pull_s:6.2f}s create {r.create_s:5.2f}s "
                        f"run {r.run_s:6.2f}s total {r.total_s:6.2f}s, {r.bytes / 1e6:8.1f} MB"
                    )
                    results.append(r)
        finally:
            for stop in stack:
                stop()
            if delay is not None:
                delay.stop()
    return results
