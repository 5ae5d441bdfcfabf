"""``lazypull snapshotter`` run by hand: it logs at info (as ``containerd-lazypull-grpc``
does) and SIGTERM leaves no layer server behind, unless ``--keep-layers``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.fs.fsdclient import FsdClient, FsdError, socket_path
from tests.support.net import wait_for
from tests.support.processes import kill_layer_servers, layer_servers

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the layer server mounts FUSE (root)")


class Started:
    def __init__(self, tmp: Path, runs: list[Started], *extra: str) -> None:
        runs.append(self)  # cleaned up even if it never gets ready
        self.state = tmp / "state"
        (tmp / "config.toml").write_text("")
        self.log = tmp / "snapshotter.log"
        self.proc: subprocess.Popen[bytes] | None = None
        args = ["--root", str(self.state), "--address", str(tmp / "s.sock"), "--config", str(tmp / "config.toml")]
        env = {k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}  # as from a shell, not a unit
        env["PYTHONPATH"] = str(ROOT)
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lazypull.cli.main", "snapshotter", *args, *extra],
                stdout=logf, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        proc = self.proc
        wait_for(lambda: "serving containerd snapshots API" in self.text() or proc.poll() is not None, 60, "ready")
        assert proc.poll() is None, self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        try:
            FsdClient(socket_path(self.state)).shutdown(unmount_all=True)
        except FsdError:
            pass
        kill_layer_servers(self.state)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Started]]:
    runs: list[Started] = []
    yield runs
    for r in runs:
        r.cleanup()


def test_logs_at_info_and_sigterm_stops_its_layer_server(tmp_path: Path, started: list[Started]) -> None:
    s = Started(tmp_path, started)
    assert " INFO " in s.text()  # the default level is info, not the other commands' warning
    assert layer_servers(s.state), "the snapshotter starts its layer server"
    assert s.terminate() == 0, s.text()
    assert layer_servers(s.state) == [], s.text()
    assert "layer server stopped" in s.text()


def test_keep_layers_leaves_the_layer_server_running(tmp_path: Path, started: list[Started]) -> None:
    s = Started(tmp_path, started, "--keep-layers")
    servers = layer_servers(s.state)
    assert servers
    assert s.terminate() == 0, s.text()
    assert layer_servers(s.state) == servers
