"""Start a private containerd (temp root, state and socket) for end-to-end tests.

Never touches the host's containerd: everything lives under the given directory, and
``ctr``/``ctr-remote`` are pointed at this instance's socket by :meth:`Containerd.ctr`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.net import wait_for

CONTAINERD_BIN = shutil.which("containerd") or "/usr/bin/containerd"


@dataclass
class Containerd:
    root: Path
    address: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    namespace: str = "lazypull-test"

    def ctr(
        self, *args: str, tool: str = "ctr", timeout: float = 300, check: bool = True, input: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ctr``/``ctr-remote`` against this containerd; raise with output on failure."""
        cmd = [tool, "--address", str(self.address), "--namespace", self.namespace, *args]
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, input=input.decode() if input else None
        )
        if check and res.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}\n"
                f"--- containerd log tail ---\n{self.log()[-3000:]}"
            )
        return res

    def wait_for_snapshotter(self, name: str = "lazypull", timeout: float = 30) -> None:
        """Until containerd talks to a (re)started proxy snapshotter again: its gRPC client
        redials with a growing backoff, and calls before that fail as `unavailable`."""
        wait_for(
            lambda: self.ctr("snapshots", "--snapshotter", name, "ls", check=False, timeout=20).returncode == 0,
            timeout,
            f"containerd to reach the {name} snapshotter",
        )

    def stop(self) -> None:
        # Kill leftover tasks' shims first so no runc process outlives the test.
        try:
            tasks = self.ctr("tasks", "ls", "-q", check=False, timeout=20).stdout.split()
            for t in tasks:
                self.ctr("tasks", "kill", "-s", "KILL", t, check=False, timeout=20)
                self.ctr("tasks", "delete", "-f", t, check=False, timeout=20)
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Unmount anything left under our root (overlay/rootfs mounts of dead tasks).
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f]
        for m in sorted((m for m in mounts if m.startswith(str(self.root))), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_containerd(
    root: Path, *, proxy_plugins: dict[str, Path] | None = None, extra_config: str = "", cri_options: str = ""
) -> Containerd:
    """Start containerd under *root*; *proxy_plugins* maps snapshotter names to sockets;
    *cri_options* are lines for the CRI plugin's own table (e.g. ``sandbox_image = "..."``)."""
    root.mkdir(parents=True, exist_ok=True)
    address = root / "containerd.sock"
    lines = [
        "version = 2",
        f'root = "{root / "root"}"',
        f'state = "{root / "state"}"',
        "[grpc]",
        f'  address = "{address}"',
        "[ttrpc]",
        f'  address = "{address}.ttrpc"',
        "[debug]",
        '  level = "info"',
        "[plugins]",
        '  [plugins."io.containerd.grpc.v1.cri"]',
        "    disable_apparmor = true",
        cri_options,
        '  [plugins."io.containerd.internal.v1.opt"]',
        f'    path = "{root / "opt"}"',
    ]
    for name, sock in (proxy_plugins or {}).items():
        lines += [f"[proxy_plugins.{name}]", '  type = "snapshot"', f'  address = "{sock}"']
    cfg = root / "config.toml"
    cfg.write_text("\n".join(lines) + "\n" + extra_config)
    log_path = root / "containerd.log"
    logf = open(log_path, "wb")  # noqa: SIM115 - owned by the process
    env = dict(os.environ)
    proc = subprocess.Popen([CONTAINERD_BIN, "--config", str(cfg)], stdout=logf, stderr=subprocess.STDOUT, env=env)
    cd = Containerd(root, address, proc, log_path)
    try:
        wait_for(
            lambda: (
                proc.poll() is None and address.exists() and cd.ctr("version", check=False, timeout=5).returncode == 0
            ),
            30,
            "containerd",
        )
    except Exception:
        cd.stop()
        raise RuntimeError(f"containerd failed to start:\n{log_path.read_text(errors='replace')}") from None
    return cd
