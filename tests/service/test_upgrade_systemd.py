"""A package upgrade under a real systemd with both shipped units, while five processes read
the node's lazy layers: the new layer server takes every FUSE session over from the old one
and the new daemon starts, with no read failing (docs/operations.md, *Restarts and upgrades*)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from lazypull.fs.fsdclient import FsdClient, socket_path
from tests.service.test_fsd import make_layer, spec
from tests.support.readers import Reads, collect
from tests.support.systemd import Systemd, private_systemd, shipped_unit

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FSD, DAEMON = "lazypull-fsd.service", "containerd-lazypull-grpc.service"
# What scripts/install-node.sh runs once the new package is in place (asserted below).
UPGRADE = (["daemon-reload"], ["try-reload-or-restart", FSD], ["try-reload-or-restart", DAEMON])


def test_install_node_upgrades_as_tested_here() -> None:
    script = (REPO / "scripts" / "install-node.sh").read_text()
    assert "UNITS=(lazypull-fsd containerd-lazypull-grpc)" in script  # the layer server first
    assert "systemctl daemon-reload\n" in script
    assert 'for u in "${UNITS[@]}"; do systemctl try-reload-or-restart "$u" || ' in script


def _handover(log: Path) -> tuple[float, float]:
    """When the old layer server began handing over and when it exited (time.time())."""

    def at(line: str) -> float:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    lines = log.read_text().splitlines()
    begin = next(at(x) for x in lines if "handing 2 layers over" in x)
    return begin, next(at(x) for x in lines if "its successor serves its 2 layers" in x)


BIN_FSD, BIN_DAEMON = "/usr/local/bin/lazypull-fsd", "/usr/local/bin/containerd-lazypull-grpc"


def install_binaries(bin_dir: Path, pythonpath: Path, build: str) -> None:
    """The two commands as a package installs them: fixed paths whose content an upgrade replaces."""
    bin_dir.mkdir(exist_ok=True)
    commands = {"lazypull-fsd": "lazypull.service.fsd", "containerd-lazypull-grpc": "lazypull.service.main"}
    for name, module in commands.items():
        tmp = bin_dir / f".{name}.new"
        tmp.write_text(
            f'#!/bin/sh\nexec env PYTHONPATH={pythonpath} LAZYPULL_BUILD={build} {sys.executable} -m {module} "$@"\n'
        )
        tmp.chmod(0o755)
        tmp.rename(bin_dir / name)  # as dpkg and pip do: the running process keeps its image


def unit(name: str, bin_dir: Path, root: Path, log: Path, config: Path) -> str:
    """A unit of deploy/ with the test's binaries, root and log: nothing else changed."""
    if name == FSD:
        return shipped_unit(
            name, {BIN_FSD: str(bin_dir / "lazypull-fsd"), "/var/lib/containerd-lazypull-grpc": str(root)}, log
        )
    replace = {
        BIN_DAEMON: str(bin_dir / "containerd-lazypull-grpc"),
        "/run/containerd-lazypull-grpc/containerd-lazypull-grpc.sock": str(root / "daemon.sock"),
        "/etc/containerd-lazypull-grpc/config.toml": str(config),
        "--config=": f"--root={root} --config=",
    }
    return shipped_unit(name, replace, log)


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[Systemd]:
    with private_systemd(tmp_path) as sd:
        yield sd


def _environ(sd: Systemd, pid: str) -> str:
    return sd.run("cat", f"/proc/{pid}/environ").stdout.replace("\0", "\n")


@dataclass
class Upgrade:
    """What happened to the reads while the units were upgraded."""

    reads: Reads
    started: float  # time.time() of the first command (daemon-reload)
    layer_server_started: float  # ... of the layer server's command (its reload, or restart)
    layer_server_done: float  # ... when the layer server's command returned
    done: float  # ... when the daemon's did
    pids: dict[str, tuple[str, str]]  # unit -> main pid before, after
    devs: tuple[list[str], list[str]]  # the mounts' devices before, after

    def summary(self) -> str:
        r, t0, ts, t1, t2 = self.reads, self.started, self.layer_server_started, self.layer_server_done, self.done
        return (
            f"{len(r.rows)} reads by 5 processes, {len(r.failures)} failed; slowest: "
            f"{r.slowest(end=t0) * 1000:.0f} ms before the upgrade, "
            f"{r.slowest(t0, ts) * 1000:.0f} ms during daemon-reload ({ts - t0:.2f} s), "
            f"{r.slowest(ts, t1) * 1000:.0f} ms during the layer server's ({t1 - ts:.2f} s), "
            f"{r.slowest(t1, t2) * 1000:.0f} ms during the daemon's ({t2 - t1:.2f} s), "
            f"{r.slowest(t2) * 1000:.0f} ms after"
        )


def upgrade_while_reading(
    systemd: Systemd, tmp_path: Path, commands: tuple[list[str], ...] = UPGRADE, cache_files: int = 0
) -> Upgrade:
    """Both units of deploy/ started, two layers mounted, five processes reading them; then the
    package replaced and *commands* run (daemon-reload, the layer server's, the daemon's).
    *cache_files*: chunks of other layers in the cache beforehand (empty files), as on a node
    that has run a while: what a starting server scans."""
    root, bin_dir, log = tmp_path / "lp", tmp_path / "bin", tmp_path / "units.log"
    root.mkdir()
    for i in range(cache_files):
        name = hashlib.sha256(b"other chunk %d" % i).hexdigest()
        chunk = tmp_path / "cache" / name[:2] / name
        chunk.parent.mkdir(parents=True, exist_ok=True)
        chunk.touch()
    config = tmp_path / "config.toml"
    config.write_text("")
    install_binaries(bin_dir, REPO, "old")
    for name in (FSD, DAEMON):
        systemd.install_unit(name, unit(name, bin_dir, root, log, config))
    systemd.systemctl("start", FSD, DAEMON)
    assert sorted(systemd.running_services()) == sorted([FSD, DAEMON])
    client = FsdClient(socket_path(root))

    # Two lazily mounted layers: many small files (each read first uncached) and a few (cached).
    many = {f"f{i:04}.bin": os.urandom(16 << 10) for i in range(1200)}
    few = {f"c{i}.bin": os.urandom(64 << 10) for i in range(4)}
    mounts = []
    for name, files in (("many", many), ("few", few)):
        blob, desc = make_layer(tmp_path, name, files)
        _, fd = client.mount(spec(tmp_path, blob, desc), tmp_path / name, timeout=30)
        os.close(fd)  # only the server and systemd's fd store hold the connection
        mounts.append(tmp_path / name)
    devs = [systemd.run("stat", "-c", "%d", str(m)).stdout for m in mounts]
    for f in few:
        systemd.run("md5sum", str(tmp_path / "few" / f))  # in the chunk cache from here on

    stop = tmp_path / "stop"
    outs, readers = [], []
    names = sorted(many)
    for i in range(5):
        out = tmp_path / f"reads-{i}.jsonl"
        if i < 3:  # uncached: each its own share of the files, each read a first read
            files = [str(tmp_path / "many" / n) for n in names[i::3]]
        else:
            files = [str(tmp_path / "few" / n) for n in few]
        readers.append(
            systemd.popen(
                "env", f"PYTHONPATH={REPO}", sys.executable, "-m", "tests.support.readers", str(out), str(stop), *files
            )
        )
        outs.append(out)
    try:
        time.sleep(1.5)
        before = {u: systemd.show(u, "MainPID") for u in (FSD, DAEMON)}
        # The new package: other code (a copy) behind the same command paths.
        new_code = tmp_path / "new"
        shutil.copytree(REPO / "lazypull", new_code / "lazypull", ignore=shutil.ignore_patterns("__pycache__"))
        install_binaries(bin_dir, new_code, "new")
        t0 = time.time()
        systemd.systemctl(*commands[0])
        ts = time.time()
        systemd.systemctl(*commands[1])
        t1 = time.time()
        systemd.systemctl(*commands[2])
        t2 = time.time()
        time.sleep(1.5)
    finally:
        stop.touch()
        for p in readers:
            p.wait(60)
    pids = {u: (before[u], systemd.show(u, "MainPID")) for u in (FSD, DAEMON)}
    after = [systemd.run("stat", "-c", "%d", str(m)).stdout for m in mounts]
    return Upgrade(collect(outs), t0, ts, t1, t2, pids, (devs, after))


def test_package_upgrade_fails_no_read(systemd: Systemd, tmp_path: Path) -> None:
    up = upgrade_while_reading(systemd, tmp_path)
    reads, log = up.reads, tmp_path / "units.log"
    h0, h1 = _handover(log)
    slowest = reads.slowest(h0 - 0.1, h1 + 0.1)
    print(f"\nhandover {(h1 - h0) * 1000:.0f} ms, slowest read begun in it {slowest * 1000:.0f} ms")
    print(up.summary())
    assert not reads.failures, reads.failures[:5]
    assert reads.slowest() < 2.0  # a loaded 2-core machine; measured by hand: bench/bench_upgrade.py
    # Only fds are passed in the handover (the successor opened everything before): 2-13 ms
    # measured at load 4-11; a handover that opened layers or scanned the cache in it took 23-262.
    assert h1 - h0 < 0.5
    for u in (FSD, DAEMON):
        old, new = up.pids[u]
        assert new != old and "LAZYPULL_BUILD=new" in _environ(systemd, new)  # the new package runs
        assert systemd.show(u, "ActiveState") == "active"
    assert systemd.show(FSD, "NRestarts") == "0"  # handed over: the service never stopped
    assert up.devs[0] == up.devs[1]  # never remounted
    client = FsdClient(socket_path(tmp_path / "lp"))
    assert [r["state"] for r in client.list()] == ["serving", "serving"]
    st = client.alive()
    assert st is not None and str(st["pid"]) == up.pids[FSD][1]
    client.shutdown(unmount_all=True)
    text = log.read_text()
    assert "took over 2 of 2 layers" in text and "Traceback" not in text + systemd.log.read_text()
    assert "prepared in" in text  # the layers opened before the handover, while the old server served
    assert "answered every request read" in text  # the old server exited with nothing unanswered
