"""Bench modes ``podman`` (a full ``podman pull``) and ``podman-lazypull`` (the same image
converted, its layers from ``lazypull store``): a private graph root each run, so every run
starts cold; timed like the containerd modes (pull, create, run), bytes from the shaped link."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lazypull.bench.cleanup import remove_node, stop_processes
from lazypull.bench.images import BenchImage
from lazypull.bench.netns import ShapedNet
from lazypull.errors import LazypullError

MODES = ("podman", "podman-lazypull")


class PodmanNode:
    """Podman with its own storage.conf (overlay), and for ``podman-lazypull`` a running store."""

    def __init__(self, root: Path, mode: str, registry_host: str, background_fetch: bool) -> None:
        self.root = root
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        self.store: subprocess.Popen[bytes] | None = None
        conf = f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "graph"}"\nrunroot = "{root / "run"}"\n'
        if mode == "podman-lazypull":
            store_dir = root / "store"
            conf += f'[storage.options]\nadditionallayerstores = ["{store_dir}:ref"]\n'
            cmd = [
                sys.executable,
                "-m",
                "lazypull.cli.main",
                "store",
                "--plain-http",
                "--state-dir",
                str(root / "state"),
            ]
            cmd += ["--fsd-root", str(root / "fsd"), "--cache-dir", str(root / "cache"), str(store_dir)]
            if not background_fetch:
                cmd.insert(5, "--no-background-fetch")
            log = open(root / "store.log", "wb")  # noqa: SIM115 - the child owns it
            self.store = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 30
            while not (root / "store.log").read_bytes().startswith(b"serving"):
                if self.store.poll() is not None or time.monotonic() > deadline:
                    raise LazypullError(f"lazypull store did not start: {(root / 'store.log').read_text()[-800:]}")
                time.sleep(0.05)
        (root / "storage.conf").write_text(conf)
        self.env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(root / "storage.conf")}
        self.registry_host = registry_host

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=3600)
        if check and res.returncode != 0:
            raise LazypullError(f"podman {args[0]} failed: {(res.stderr or res.stdout)[-800:]}")
        return res

    def stop(self) -> None:
        self.podman("rm", "-af", check=False)
        self.podman("rmi", "-af", check=False)
        self.podman("system", "reset", "-f", check=False)
        stop_processes(self.store)
        remove_node(self.root)


def run_args() -> list[str]:
    """No network for the workload; rlimits as the host has them (podman raises them by
    default, which a host without CAP_SYS_RESOURCE, e.g. a CI container, refuses)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ["--network", "none", "--ulimit", f"nofile={soft}:{hard}", "--ulimit", "nproc=4096:4096"]


def podman_run(
    root: Path, net: ShapedNet, img: BenchImage, ref: str, mode: str, run: int, registry_host: str, bg: bool
) -> tuple[float, float, float, int]:
    """(pull, create, run seconds, bytes received) of one cold start."""
    node = PodmanNode(root, mode, registry_host, bg)
    try:
        before = net.rx_bytes()
        t0 = time.monotonic()
        node.podman("pull", "--tls-verify=false", "-q", ref)
        t1 = time.monotonic()
        cid = f"bench-{run}"
        node.podman("create", "--name", cid, *run_args(), ref, *img.workload)
        t2 = time.monotonic()
        out = node.podman("start", "-a", cid)
        t3 = time.monotonic()
        if img.expect not in out.stdout:
            raise LazypullError(f"{img.name}/{mode}: workload printed {out.stdout[-200:]!r}, expected {img.expect!r}")
        return t1 - t0, t2 - t1, t3 - t2, net.rx_bytes() - before
    finally:
        node.stop()
