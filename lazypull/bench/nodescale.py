"""The node-scale workload: many images of many small distinct layers on one node.

A Kubernetes node holds hundreds of layers; what matters there is what the snapshotter
costs per layer (memory, processes, time to mount) and whether it stays healthy, not
the bytes of one big image. N images of L distinct small layers each (busybox in the
first) are pulled lazily with ``ctr-remote image rpull`` on ONE node (one containerd,
one snapshotter), one after the other or all at once, then each is run once. Reported:
rpull and run times, memory (RSS) of the snapshotter and everything it runs, process
count, layers that fell back to a full pull, failures.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import statistics
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lazypull.bench.runner import BenchConfig, Node, bench_registry
from lazypull.convert.copy import copy_image
from lazypull.convert.image import ConvertOptions, convert_image
from lazypull.errors import LazypullError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.layout import OCILayout
from lazypull.oci.types import Descriptor, Manifest, host_platform
from lazypull.registry.options import RegistryOptions
from lazypull.registry.stores import open_store

FILES_PER_LAYER = 8
FILE_SIZE = 4096


@dataclass(frozen=True)
class NodeScaleSpec:
    images: int = 5
    layers: int = 20
    concurrent: bool = False

    @property
    def name(self) -> str:
        return f"node-scale {self.images}x{self.layers}" + (" concurrent" if self.concurrent else "")


@dataclass
class NodeScaleResult:
    mode: str
    spec: NodeScaleSpec
    rpull_s: list[float] = field(default_factory=list)
    run_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    rss_bytes: int = 0
    processes: int = 0
    fallbacks: int = 0
    failures: list[str] = field(default_factory=list)

    def row(self) -> dict[str, object]:
        pulls = self.rpull_s or [float("nan")]
        return {
            "workload": self.spec.name,
            "mode": self.mode,
            "layers": self.spec.images * self.spec.layers,
            "rpull_median_s": statistics.median(pulls),
            "rpull_min_s": min(pulls),
            "rpull_max_s": max(pulls),
            "pull_wall_s": self.wall_s,
            "run_median_s": statistics.median(self.run_s) if self.run_s else float("nan"),
            "rss_mb": self.rss_bytes / 1e6,
            "processes": self.processes,
            "fallbacks": self.fallbacks,
            "failures": len(self.failures),
        }


def marker(image: int, layer: int) -> str:
    return f"image-{image}-layer-{layer}"


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> None:
    ti = tarfile.TarInfo(name)
    ti.mode, ti.mtime, ti.size = mode, 1_700_000_000, len(data)
    for k, v in kw.items():
        setattr(ti, k, v)
    tf.addfile(ti, io.BytesIO(data) if data else None)


def _layer_tar(image: int, layer: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        if layer == 0:
            busybox = Path("/bin/busybox").read_bytes()
            _add(tf, "bin", mode=0o755, type=tarfile.DIRTYPE)
            _add(tf, "bin/busybox", busybox, 0o755)
            for tool in ("sh", "cat", "echo", "ls"):
                _add(tf, f"bin/{tool}", type=tarfile.SYMTYPE, linkname="busybox", mode=0o777)
        d = f"layer-{layer:03d}"
        _add(tf, d, mode=0o755, type=tarfile.DIRTYPE)
        for f in range(FILES_PER_LAYER):
            head = f"{marker(image, layer)} file {f}\n".encode()
            _add(tf, f"{d}/file-{f}", head + os.urandom(FILE_SIZE - len(head)).hex().encode()[: FILE_SIZE - len(head)])
    return buf.getvalue()


def build_images(work: Path, spec: NodeScaleSpec) -> list[OCILayout]:
    """N OCI layouts of L distinct small gzip layers (cached per N x L)."""
    if not Path("/bin/busybox").exists():
        raise LazypullError("the node-scale workload needs /bin/busybox (Debian package busybox-static)")
    out = []
    for i in range(spec.images):
        d = work / f"node-scale-{spec.layers}" / f"img-{i:03d}"
        if not (d / "index.json").exists():
            tmp = d.with_suffix(".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            layout = OCILayout(tmp, create=True)
            descs, diff_ids = [], []
            for j in range(spec.layers):
                raw = _layer_tar(i, j)
                gz = gzip.compress(raw, 6, mtime=0)
                desc = Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(gz), len(gz))
                layout.push_bytes(desc, gz)
                descs.append(desc)
                diff_ids.append(digestlib.of_bytes(raw))
            plat = host_platform()
            cfg = json.dumps(
                {
                    "architecture": plat.architecture,
                    "os": "linux",
                    "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
                    "rootfs": {"type": "layers", "diff_ids": diff_ids},
                }
            ).encode()
            cd = Descriptor(mt.OCI_CONFIG, digestlib.of_bytes(cfg), len(cfg))
            layout.push_bytes(cd, cfg)
            m = Manifest(cd, descs).to_bytes()
            md = Descriptor(mt.OCI_MANIFEST, digestlib.of_bytes(m), len(m), platform=plat)
            layout.push_manifest(md, m, tag="latest")
            shutil.rmtree(d, ignore_errors=True)
            tmp.rename(d)
        out.append(OCILayout(d, "latest"))
    return out


def tree_usage(root_pid: int, owned_dir: Path) -> tuple[int, int]:
    """(RSS bytes, process count) of *root_pid*, its descendants, and any process started
    with *owned_dir* (or a path under it) as an argument: a server that detached from the
    daemon still counts."""
    parents: dict[int, int] = {}
    argv: dict[int, list[str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            argv[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
    owned = str(owned_dir)
    members = {p for p, args in argv.items() if any(a == owned or a.startswith(owned + "/") for a in args)}
    members.add(root_pid)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in members and pid not in members:
                members.add(pid)
                grew = True
    rss = 0
    for pid in members:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
        except OSError:
            continue
    alive = sum(1 for p in members if Path(f"/proc/{p}").exists())
    return rss, alive


def push_images(cfg: BenchConfig, spec: NodeScaleSpec, host: str) -> list[tuple[str, list[str]]]:
    """Build, push and convert the images; returns (eStargz reference, its layer digests) per image."""
    work = cfg.workdir.resolve()
    ropts = RegistryOptions(plain_http=True)
    out = []
    for i, layout in enumerate(build_images(work, spec)):
        base = f"{host}/node-scale/l{spec.layers}-img{i:03d}"
        copy_image(layout, open_store(f"{base}:org", ropts, for_push=True), tag="org")
        dst = open_store(f"{base}:esgz", ropts, for_push=True)
        desc = convert_image(open_store(f"{base}:org", ropts), dst, ConvertOptions(oci=True), tag="esgz")
        layers = [layer["digest"] for layer in json.loads(dst.fetch(desc))["layers"]]
        out.append((f"{base}:esgz", layers))
    cfg.progress(f"[images] {spec.images} images x {spec.layers} layers built, pushed and converted")
    return out


def _snapshotter_root(node: Node, mode: str) -> Path:
    return node.root / ("stargz" if mode == "reference" else "lazypull")


def run_mode(cfg: BenchConfig, spec: NodeScaleSpec, images: list[tuple[str, list[str]]], mode: str) -> NodeScaleResult:
    """One node, every image pulled (in turn or at once) and run once; usage measured with all mounted."""
    snap = "stargz" if mode == "reference" else "lazypull"
    res = NodeScaleResult(mode, spec)
    node = Node(cfg.workdir.resolve() / "node", mode, images[0][0].split("/", 1)[0], cfg)
    lock = threading.Lock()
    try:

        def pull(ref: str) -> None:
            t0 = time.monotonic()
            r = node.ctr("image", "rpull", "--plain-http", "--snapshotter", snap, ref, tool="ctr-remote", check=False)
            dt = time.monotonic() - t0
            with lock:
                res.rpull_s.append(dt)
                if r.returncode != 0:
                    res.failures.append(f"rpull {ref}: {(r.stderr or r.stdout).strip()[-300:]}")

        t0 = time.monotonic()
        if spec.concurrent:
            threads = [threading.Thread(target=pull, args=(ref,)) for ref, _ in images]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for ref, _ in images:
                pull(ref)
        res.wall_s = time.monotonic() - t0
        fetched = set(node.ctr("content", "ls", "-q", check=False).stdout.split())
        res.fallbacks = sum(1 for _, layers in images for d in layers if d in fetched)
        for i, (ref, _) in enumerate(images):
            want = marker(i, spec.layers - 1)
            t1 = time.monotonic()
            r = node.ctr(
                "run",
                "--rm",
                "--snapshotter",
                snap,
                ref,
                f"ns-{i}",
                "cat",
                f"/layer-{spec.layers - 1:03d}/file-0",
                check=False,
            )
            res.run_s.append(time.monotonic() - t1)
            if r.returncode != 0 or want not in r.stdout:
                res.failures.append(f"run {ref}: rc={r.returncode} {(r.stderr or r.stdout).strip()[-300:]}")
        assert node.snap_proc is not None
        res.rss_bytes, res.processes = tree_usage(node.snap_proc.pid, _snapshotter_root(node, mode))
    finally:
        node.stop()
    cfg.progress(
        f"[node-scale] {mode:10} {spec.name}: rpull median {statistics.median(res.rpull_s or [0]):.2f}s "
        f"(max {max(res.rpull_s or [0]):.2f}s), RSS {res.rss_bytes / 1e6:.0f} MB, {res.processes} processes, "
        f"{res.fallbacks} fallbacks, {len(res.failures)} failures"
    )
    for f in res.failures:
        cfg.progress(f"[node-scale]   failure: {f}")
    return res


NODE_SCALE_MODES = ("lazypull", "reference")  # lazy pulls of the eStargz images through a snapshotter daemon


def node_scale_modes(modes: list[str]) -> tuple[list[str], list[str]]:
    """(the modes node-scale runs, the ones it skips), in the order given."""
    return [m for m in modes if m in NODE_SCALE_MODES], [m for m in modes if m not in NODE_SCALE_MODES]


def run_node_scale(cfg: BenchConfig, specs: list[NodeScaleSpec], runs: int = 1) -> list[NodeScaleResult]:
    """Every spec x mode x run, each run on a fresh node; images are built once per spec.
    Modes without a snapshotter daemon (``overlayfs``) or other image forms are skipped."""
    modes, skipped = node_scale_modes(cfg.modes)
    if skipped:
        cfg.progress(f"[node-scale] modes {', '.join(skipped)} skipped (node-scale runs {', '.join(NODE_SCALE_MODES)})")
    results = []
    with bench_registry(cfg) as (_net, reg):
        for spec in specs:
            images = push_images(cfg, spec, reg.host)
            done = [run_mode(cfg, spec, images, mode) for _ in range(runs) for mode in modes]  # modes take turns
            results += sorted(done, key=lambda r: modes.index(r.mode))  # the table: a mode's runs together
    return results


COLUMNS = [
    "workload",
    "mode",
    "layers",
    "rpull_median_s",
    "rpull_min_s",
    "rpull_max_s",
    "pull_wall_s",
    "run_median_s",
    "rss_mb",
    "processes",
    "fallbacks",
    "failures",
]


def write_csv(results: list[NodeScaleResult], path: Path) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        for r in results:
            w.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.row().items()})


def markdown(results: list[NodeScaleResult]) -> str:
    lines = [
        "| workload | mode | layers | rpull s median (min-max) | all pulls s | run s | RSS MB | processes "
        "| fallbacks | failures |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        x = r.row()
        lines.append(
            f"| {x['workload']} | {x['mode']} | {x['layers']} | {x['rpull_median_s']:.2f} "
            f"({x['rpull_min_s']:.2f}-{x['rpull_max_s']:.2f}) | {x['pull_wall_s']:.2f} | {x['run_median_s']:.2f} "
            f"| {x['rss_mb']:.0f} | {x['processes']} | {x['fallbacks']} | {x['failures']} |"
        )
    return "\n".join(lines) + "\n"
