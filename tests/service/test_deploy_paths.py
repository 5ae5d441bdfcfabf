"""The daemon's install paths agree: scripts/install-node.sh puts the binary and the README
where the systemd unit, the Containerfile and the DaemonSet look for them (the install itself
runs in tests/e2e/test_stock_debian.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def read(rel: str) -> str:
    return (ROOT / rel).read_text()


def test_unit_containerfile_and_daemonset_run_what_install_node_installs() -> None:
    install = read("scripts/install-node.sh")
    prefix = re.search(r"^PREFIX=(\S+)$", install, re.M)[1]
    bin_dir = re.search(r"^BIN=(\S+)$", install, re.M)[1]
    assert 'ln -sfn "$PREFIX/venv/bin/$cmd" "$BIN/$cmd"' in install
    daemon = f"{bin_dir}/containerd-lazypull-grpc"

    unit = read("deploy/containerd-lazypull-grpc.service")
    assert re.search(r"^ExecStart=(\S+)", unit, re.M)[1] == daemon
    doc = re.search(r"^Documentation=file:(\S+)$", unit, re.M)[1]
    assert doc == f"{prefix}/README.md" and 'install -m 0644 README.md "$PREFIX/README.md"' in install

    containerfile = read("deploy/Containerfile")
    assert "scripts/install-node.sh --no-systemd" in containerfile
    assert json.loads(re.search(r"^ENTRYPOINT (.+)$", containerfile, re.M)[1])[0] == daemon

    daemonset = read("deploy/kubernetes/lazypull-daemonset.yaml")
    container = daemonset.split("\n      containers:\n", 1)[1]
    assert json.loads(re.search(r"command: (\[.*?\])", container, re.S)[1])[0] == daemon
    # The init container configures containerd with the installed package's Python.
    init = daemonset.split("initContainers:", 1)[1].split("\n      containers:", 1)[0]
    assert json.loads(re.search(r"command: (\[.*?\])", init, re.S)[1])[0] == f"{prefix}/venv/bin/python"


def test_the_store_unit_runs_the_installed_command_on_the_documented_store() -> None:
    install = read("scripts/install-node.sh")
    assert re.search(r"^STORE_UNIT=lazypull-store\b", install, re.M)
    unit = read("deploy/lazypull-store.service")
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.M)[1].split()
    bin_dir = re.search(r"^BIN=(\S+)$", install, re.M)[1]
    assert exec_start[0] == f"{bin_dir}/lazypull" and "store" in exec_start
    store = exec_start[-1]
    for doc in ("README.md", "docs/operations.md"):
        assert f'additionallayerstores = ["{store}:ref"]' in read(doc)
