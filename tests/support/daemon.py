"""Start the lazypull snapshotter daemon as a real process, for end-to-end tests."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazypull.fs.fsdclient import FsdClient, FsdError, socket_path
from tests.support.net import wait_for
from tests.support.processes import kill_layer_servers, layer_servers


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

    def fsd(self) -> FsdClient:
        return FsdClient(socket_path(self.root))

    def layers(self) -> list[dict[str, Any]]:
        """The layers the node's layer server serves (none if it is not running)."""
        try:
            return [r for r in self.fsd().list() if r["state"] == "serving"]
        except FsdError:
            return []

    def server_processes(self) -> list[int]:
        """Layer server processes of this daemon's root."""
        return layer_servers(self.root)

    def stop_layers(self) -> None:
        """Unmount every layer and stop the layer server (the daemon leaves both running by design)."""
        try:
            self.fsd().shutdown(unmount_all=True)
        except FsdError:
            pass
        try:
            wait_for(lambda: not self.server_processes(), 20, "layer server to exit")
        except Exception:
            kill_layer_servers(self.root)


def start_daemon(root: Path, config_toml: str = "") -> Daemon:
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "config.toml"
    cfg.write_text(config_toml)
    d = Daemon(root / "state", root / "lazypull.sock", cfg, root / "daemon.log")
    d.start()
    return d
