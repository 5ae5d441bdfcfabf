"""The daemon's command line: a mistyped --config or log level stops it with exit 2 and the
reason, instead of a daemon running on defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def daemon(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    base = ["--address", str(tmp_path / "d.sock"), "--root", str(tmp_path / "root")]
    return subprocess.run(
        [sys.executable, "-m", "lazypull.service.main", *base, *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "/etc/lazypull-typo/config.toml"], "--config /etc/lazypull-typo/config.toml: no such file"),
        (["--log-level", "verbose"], "unknown log level 'verbose'"),
    ],
    ids=["config", "log-level"],
)
def test_mistyped_flags_stop_the_daemon_with_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    res = daemon(tmp_path, *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "root").exists() and not (tmp_path / "d.sock").exists()


def test_lazypull_snapshotter_exits_2_too(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "lazypull.cli.main", "snapshotter", "--root", str(tmp_path / "root"),
         "--config", str(tmp_path / "missing.toml")],
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 2 and "missing.toml: no such file" in res.stderr, res.stderr


def test_the_layer_server_refuses_an_unknown_log_level_with_exit_2(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "lazypull.service.fsd", "--root", str(tmp_path / "fsd"), "--log-level", "loud"],
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 2 and "unknown log level 'loud'" in res.stderr, res.stderr
    assert not (tmp_path / "fsd").exists()
