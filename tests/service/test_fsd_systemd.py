"""The layer server under a real systemd, with the unit the project ships (deploy/): its
fd store carries every layer's connection across a crash, a stop/start and an upgrade."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.fs.fsdclient import FsdClient, socket_path
from tests.service.test_fsd import make_layer, spec
from tests.support.systemd import Systemd, private_systemd, shipped_unit

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
UNIT = "lazypull-fsd.service"


def _unit(root: Path, address: Path, log: Path) -> str:
    """deploy/lazypull-fsd.service with this checkout's interpreter, a test root and log."""
    return shipped_unit(
        UNIT,
        {
            "/usr/local/bin/lazypull-fsd": f"{sys.executable} -m lazypull.service.fsd",
            "/var/lib/containerd-lazypull-grpc/fsd.sock": str(address),
            "/var/lib/containerd-lazypull-grpc/fsd": str(root),
            "Environment=HOME=/root": f"Environment=HOME=/root PYTHONPATH={REPO}",
        },
        log,
    )


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[Systemd]:
    with private_systemd(tmp_path) as sd:
        yield sd


def _md5_in(sd: Systemd, path: Path) -> str:
    return sd.run("md5sum", str(path)).stdout.split()[0]


def _wait_instance(client: FsdClient, not_this: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = client.alive()
        if st is not None and st["instance"] != not_this:
            return st
        time.sleep(0.05)
    raise AssertionError("no new layer server answered")


def test_fd_store_keeps_layers_across_crash_stop_and_upgrade(systemd: Systemd, tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    blob, desc = make_layer(tmp_path, "s", {"a.bin": data, "b.bin": data[::-1], "c.bin": data[:4096]})
    root, mp = tmp_path / "fsd", tmp_path / "m"
    addr = socket_path(root)
    log = tmp_path / "fsd.log"
    systemd.install_unit(UNIT, _unit(root, addr, log))
    systemd.systemctl("start", UNIT)  # Type=notify: returns once READY=1 came
    assert systemd.running_services() == [UNIT]  # nothing of the machine's own boot
    client = FsdClient(addr)
    st = client.alive()
    assert st is not None and systemd.show(UNIT, "MainPID") == str(st["pid"])
    _, fd = client.mount(spec(tmp_path, blob, desc), mp, timeout=30)
    os.close(fd)  # no daemon holds a copy: only systemd's fd store
    assert _md5_in(systemd, mp / "a.bin") == hashlib.md5(data).hexdigest()
    assert systemd.show(UNIT, "NFileDescriptorStore") == "1"
    dev = systemd.run("stat", "-c", "%d", str(mp)).stdout

    # A crash: systemd restarts the server (Restart=always) with the fds (LISTEN_FDS).
    systemd.systemctl("kill", "-s", "KILL", UNIT)
    st = _wait_instance(client, str(st["instance"]))
    assert _md5_in(systemd, mp / "b.bin") == hashlib.md5(data[::-1]).hexdigest()
    assert systemd.show(UNIT, "NRestarts") == "1"

    # An upgrade: reload (ExecReload) starts a successor that takes over and becomes the main pid.
    old_pid = st["pid"]
    systemd.systemctl("reload", UNIT)
    st = _wait_instance(client, str(st["instance"]))
    deadline = time.monotonic() + 30
    while systemd.show(UNIT, "MainPID") != str(st["pid"]):
        assert time.monotonic() < deadline, "systemd did not learn the successor's pid"
        time.sleep(0.05)
    assert st["pid"] != old_pid and systemd.show(UNIT, "ActiveState") == "active"
    assert systemd.show(UNIT, "NRestarts") == "1"  # not a restart: the service never stopped
    assert _md5_in(systemd, mp / "c.bin") == hashlib.md5(data[:4096]).hexdigest()

    # A planned restart (SIGTERM: answer what is in flight, exit; the store keeps the fds).
    systemd.systemctl("restart", UNIT)
    _wait_instance(client, str(st["instance"]))
    assert [r["state"] for r in client.list()] == ["serving"]
    assert systemd.run("stat", "-c", "%d", str(mp)).stdout == dev  # never remounted
    systemd.run("sh", "-c", f"echo 3 > /proc/sys/vm/drop_caches; md5sum {mp}/a.bin")
    assert _md5_in(systemd, mp / "a.bin") == hashlib.md5(data).hexdigest()
    client.shutdown(unmount_all=True)
    text = log.read_text()
    assert "took over 1 of 1 layers" in text and "1 layers to re-attach" in text
    assert "Traceback" not in text + systemd.log.read_text()
