"""The fd holder a layer server started without systemd runs under: it alone keeps the layers'
connections across the server's death, follows an upgrade's successor, and ends with a
clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lazypull.service.fdholder import holder_running
from lazypull.service.fsdclient import FsdClient, start_server
from tests.service.test_fsd import make_layer, spec
from tests.service.test_fsd_systemd import _wait_instance
from tests.support.processes import kill_layer_servers, layer_servers

pytestmark = pytest.mark.e2e


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
