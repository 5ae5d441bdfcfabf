"""The README's commands on a stock Debian 12 (scripts/check-stock-debian.sh): a fresh
bookworm root where Debian's python3 is the only Python, scripts/setup.sh and the unit tests
as root and through sudo, and the node install the systemd units run, and its uninstall."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check-stock-debian.sh"


def check(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the check in its own process group so a timeout ends everything it started."""
    proc = subprocess.Popen(
        [str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"stock Debian check exceeded {timeout:.0f} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def test_commands_inside_run_on_stock_python_and_their_failure_fails_the_check() -> None:
    # Exit 7 only if every line before it held: a failing step inside comes back out.
    res = check(
        "--run",
        'test "$(command -v python3)" = /usr/bin/python3; test -z "${PYTHONPATH:-}"; '
        "test ! -e .venv; test -x scripts/setup.sh; exit 7",
        timeout=900,
    )
    assert res.returncode == 7, res.stdout[-4000:]


def test_node_install_links_what_both_units_run_and_uninstall_removes_it() -> None:
    # $NODE_CHECKS (the script's node install check): each unit's ExecStart runs, then
    # --uninstall leaves /etc, /opt and /usr/local as they were before the install.
    res = check(
        "--run",
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 python3-venv >/dev/null; "
        "$NODE_CHECKS",
        timeout=1200,
    )
    assert res.returncode == 0, res.stdout[-6000:]
    for unit in ("lazypull-fsd", "containerd-lazypull-grpc"):
        assert f"{unit}.service runs /usr/local/bin/{unit}" in res.stdout, res.stdout[-4000:]
    assert "--uninstall removed everything it added" in res.stdout, res.stdout[-4000:]


def test_readme_commands_on_stock_debian_as_root_and_through_sudo() -> None:
    res = check(timeout=1800)
    assert res.returncode == 0, res.stdout[-6000:]
    assert "root: passed" in res.stdout and "sudo: passed" in res.stdout, res.stdout[-2000:]
