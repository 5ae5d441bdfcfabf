"""Start the lazypull snapshotter daemon as a real process, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.net import wait_for


@dataclass
class Daemon:
    root: Path
    address: Path
    config: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.address.unlink(missing_ok=True)  # a kill -9'd daemon leaves its socket behind
        logf = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lazypull.service.main",
                "--address",
                str(self.address),
                "--root",
                str(self.root),
                "--config",
                str(self.config),
                "--log-level",
                "debug",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self.address.exists() or self.proc.poll() is not None, 30, "daemon socket")  # type: ignore[union-attr]
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def mount_processes(self) -> list[int]:
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"lazypull.fs.mountproc" in cmd and str(self.root).encode() in cmd:
                out.append(int(pid))
        return out


def start_daemon(root: Path, config_toml: str = "") -> Daemon:
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "config.toml"
    cfg.write_text(config_toml)
    d = Daemon(root / "state", root / "lazypull.sock", cfg, root / "daemon.log")
    d.start()
    return d
