"""The fd holder a layer server started without systemd runs under: it alone keeps the layers'
connections across the server's death, follows an upgrade's successor, and ends with a
clean stop."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lazypull.fs.fsdclient import FsdClient, holder_running, socket_path, start_server
from tests.service.test_fsd import make_layer, spec
from tests.service.test_fsd_systemd import _wait_instance
from tests.support.processes import kill_layer_servers, layer_servers
from tests.support.systemd import Systemd, private_systemd

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def _fds_of(pid: int) -> int:
    """/dev/fuse fds the process holds."""
    return sum(1 for f in os.listdir(f"/proc/{pid}/fd") if os.path.realpath(f"/proc/{pid}/fd/{f}") == "/dev/fuse")


def test_the_holder_alone_brings_layers_back_after_kill9(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    blob, desc = make_layer(tmp_path, "h", {"a.bin": data, "b.bin": data[::-1], "c.bin": data[:5000]})
    root, mp = tmp_path / "fsd", tmp_path / "m"
    address = tmp_path / "fsd.sock"
    client, holder = start_server(root, address, log_path=tmp_path / "fsd.log")
    assert holder is not None and holder_running(root)
    try:
        st = client.alive()
        assert st is not None and st["pid"] != holder.pid
        _, fd = client.mount(spec(tmp_path, blob, desc), mp, timeout=30)
        os.close(fd)  # nobody but the server and its holder holds the connection
        dev = os.stat(mp).st_dev
        assert (mp / "a.bin").read_bytes() == data and _fds_of(holder.pid) == 1

        os.kill(int(st["pid"]), signal.SIGKILL)
        assert (mp / "b.bin").read_bytes() == data[::-1]  # queued until the next server answers it
        st = _wait_instance(client, str(st["instance"]))
        assert [r["state"] for r in client.list()] == ["serving"] and os.stat(mp).st_dev == dev

        # Another starter (a restarted daemon) starts no second server while the holder runs.
        assert start_server(root, address, log_path=tmp_path / "fsd.log")[1] is None

        # An upgrade (SIGHUP): the successor is the holder's new main process; killed, it too comes back.
        os.kill(int(st["pid"]), signal.SIGHUP)
        st = _wait_instance(client, str(st["instance"]))
        deadline = time.monotonic() + 30
        while len(layer_servers(root)) != 1:
            assert time.monotonic() < deadline, "the retired server did not exit"
            time.sleep(0.05)
        os.kill(int(st["pid"]), signal.SIGKILL)
        st = _wait_instance(client, str(st["instance"]))
        subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
        assert (mp / "c.bin").read_bytes() == data[:5000] and os.stat(mp).st_dev == dev

        client.shutdown(unmount_all=True)  # a clean stop: the holder ends with its server
        assert holder.wait(30) == 0 and not holder_running(root)
    finally:
        kill_layer_servers(root)
        holder.poll()
        if os.path.ismount(mp):
            subprocess.run(["umount", "-l", str(mp)], check=False)
    log = (tmp_path / "fsd.log").read_text()
    assert log.count("a new one gets its 1 layers") == 2 and "Traceback" not in log


def test_a_second_holder_for_the_root_exits_at_once(tmp_path: Path) -> None:
    client, holder = start_server(tmp_path / "fsd", tmp_path / "fsd.sock", log_path=tmp_path / "fsd.log")
    assert holder is not None
    try:
        second = subprocess.run(
            [sys.executable, "-m", "lazypull.service.fdholder", "--root", str(tmp_path / "fsd")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 0 and "an fd holder already runs" in second.stderr
        assert FsdClient(tmp_path / "fsd.sock").alive() is not None
    finally:
        client.shutdown()
        holder.wait(30)


def manifest_launcher() -> str:
    """The DaemonSet's ``LAZYPULL_FSD_LAUNCHER`` (a folded YAML scalar)."""
    text = (REPO / "deploy" / "kubernetes" / "lazypull-daemonset.yaml").read_text()
    m = re.search(r"- name: LAZYPULL_FSD_LAUNCHER\n\s+value: >-\n((?:\s{16}\S.*\n)+)", text)
    assert m, "the DaemonSet sets no LAZYPULL_FSD_LAUNCHER"
    return " ".join(line.strip() for line in m[1].splitlines())


def _start_pod(sd: Systemd, name: str, root: Path, config: Path, log: Path) -> None:
    """The DaemonSet's container as a unit of its own: its processes are killed together, as
    runc kills those of a container without a PID namespace of its own when deleting it."""
    (root / "daemon.sock").unlink(missing_ok=True)  # a killed daemon leaves its socket
    started = log.read_text().count("serving containerd snapshots API") if log.exists() else 0
    sd.run(
        "systemd-run",
        f"--unit={name}",
        "-p",
        "DefaultDependencies=no",
        "-p",
        f"StandardOutput=append:{log}",
        "-p",
        f"StandardError=append:{log}",
        f"--setenv=LAZYPULL_FSD_LAUNCHER={manifest_launcher()}",
        sys.executable,
        "-m",
        "lazypull.service.main",
        f"--address={root / 'daemon.sock'}",
        f"--root={root}",
        f"--config={config}",
    )
    deadline = time.monotonic() + 60
    while not log.exists() or log.read_text().count("serving containerd snapshots API") == started:
        assert time.monotonic() < deadline, f"the daemon did not start: {log.read_text()[-2000:]}"
        time.sleep(0.1)


def test_pod_restart_keeps_layers_with_the_manifests_launcher(tmp_path: Path) -> None:
    """The daemon in a "pod" (a unit: killed as a whole, like a hostPID container deleted by
    runc) starts its layer server with the DaemonSet's launcher: as a unit of the host's
    systemd. The pod killed, the layers serve on; the server killed with no daemon, its
    holder brings it back; the next pod's daemon uses it."""
    data = os.urandom(1 << 20)
    blob, desc = make_layer(tmp_path, "k", {"a.bin": data, "b.bin": data[::-1]})
    root, mp, log = tmp_path / "lp", tmp_path / "m", tmp_path / "pods.log"
    config = tmp_path / "config.toml"
    config.write_text("")
    holder = "lazypull-fsd-holder.service"
    with private_systemd(tmp_path) as sd:
        _start_pod(sd, "pod1", root, config, log)
        assert sd.show(holder, "ActiveState") == "active"  # outside the pod
        client = FsdClient(socket_path(root))
        _, fd = client.mount(spec(tmp_path, blob, desc), mp, timeout=30)
        os.close(fd)
        assert sd.run("md5sum", str(mp / "a.bin")).stdout.split()[0] == hashlib.md5(data).hexdigest()
        held_by = sd.show(holder, "MainPID")

        sd.systemctl("kill", "-s", "KILL", "pod1.service")  # every process of the pod
        deadline = time.monotonic() + 30
        while sd.show("pod1.service", "ActiveState") == "active":
            assert time.monotonic() < deadline, "the pod did not end"
            time.sleep(0.1)
        st = client.alive()
        assert st is not None and [r["state"] for r in client.list()] == ["serving"]
        sd.run("kill", "-9", str(st["pid"]))  # and now the server, no daemon running
        _wait_instance(client, str(st["instance"]))
        sd.run("sh", "-c", "echo 3 > /proc/sys/vm/drop_caches")
        assert sd.run("md5sum", str(mp / "b.bin")).stdout.split()[0] == hashlib.md5(data[::-1]).hexdigest()

        _start_pod(sd, "pod2", root, config, log)
        assert sd.show(holder, "MainPID") == held_by  # the same holder: no second server
        assert "restored 0 lazily mounted layers" in log.read_text().rsplit("serving containerd", 2)[1]
        assert [r["state"] for r in client.list()] == ["serving"]
        client.shutdown(unmount_all=True)
        deadline = time.monotonic() + 30
        while sd.show(holder, "ActiveState") == "active":
            assert time.monotonic() < deadline, "the holder did not end with its server"
            time.sleep(0.1)
        sd.systemctl("kill", "-s", "KILL", "pod2.service")
    text = log.read_text() + (root / "fsd.log").read_text()
    assert "a new one gets its 1 layers" in text and "Traceback" not in text
