"""The README's commands on a stock Debian 12 (scripts/check-stock-debian.sh): a fresh
bookworm root where Debian's python3 is the only Python, scripts/setup.sh and the unit tests
as root and through sudo, and the node install the systemd units run, and its uninstall.

The checks start as soon as the session's collection ends (tests/support/early.py) and run
beside the other tests; each test here collects one result."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.early import Check, outcome

pytestmark = pytest.mark.e2e

SCRIPT = str(Path(__file__).resolve().parents[2] / "scripts" / "check-stock-debian.sh")


def checks() -> dict[str, Check]:
    """The checks by the test that collects each, in the order they run (the first builds
    the cached root the others reuse)."""
    return {
        "test_readme_commands_on_stock_debian_as_root_and_through_sudo": Check([SCRIPT], timeout=1800),
        "test_commands_inside_run_on_stock_python_and_their_failure_fails_the_check": Check(
            [
                SCRIPT,
                "--run",
                'test "$(command -v python3)" = /usr/bin/python3; test -z "${PYTHONPATH:-}"; '
                "test ! -e .venv; test -x scripts/setup.sh; exit 7",
            ],
            timeout=900,
        ),
        "test_node_install_links_what_both_units_run_and_uninstall_removes_it": Check(
            [
                SCRIPT,
                "--run",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 python3-venv "
                ">/dev/null; $NODE_CHECKS",
            ],
            timeout=1200,
        ),
    }


def result(request: pytest.FixtureRequest) -> subprocess.CompletedProcess[str]:
    name = request.node.name
    return outcome(name, checks()[name])


def test_readme_commands_on_stock_debian_as_root_and_through_sudo(request: pytest.FixtureRequest) -> None:
    res = result(request)
    assert res.returncode == 0, res.stdout[-6000:]
    assert "root: passed" in res.stdout and "sudo: passed" in res.stdout, res.stdout[-2000:]


def test_commands_inside_run_on_stock_python_and_their_failure_fails_the_check(request: pytest.FixtureRequest) -> None:
    # Exit 7 only if every line before it held: a failing step inside comes back out.
    res = result(request)
    assert res.returncode == 7, res.stdout[-4000:]


def test_node_install_links_what_both_units_run_and_uninstall_removes_it(request: pytest.FixtureRequest) -> None:
    # $NODE_CHECKS (the script's node install check): each unit's ExecStart runs, then
    # --uninstall leaves /etc, /opt and /usr/local as they were before the install.
    res = result(request)
    assert res.returncode == 0, res.stdout[-6000:]
    for unit in ("lazypull-fsd", "containerd-lazypull-grpc"):
        assert f"{unit}.service runs /usr/local/bin/{unit}" in res.stdout, res.stdout[-4000:]
    assert "--uninstall removed everything it added" in res.stdout, res.stdout[-4000:]
