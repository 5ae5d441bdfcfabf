"""The layer lifecycle under a busy node's concurrency: images that share layers pulled,
run and removed at once by four workers, through containerd, runc and the real daemon
(:mod:`tests.support.stress`; ``make stress`` runs 10,000 operations)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from lazypull.service.proto import snapshots_pb2, snapshots_pb2_grpc
from tests.support.containerd import Containerd, start_containerd
from tests.support.daemon import Daemon, start_daemon
from tests.support.registry import Registry, start_registry
from tests.support.stress import ImageState, Stress, build_images

pytestmark = pytest.mark.e2e


@dataclass
class World:
    registry: Registry
    images: list[ImageState]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("stress")
    reg = start_registry(root / "registry")
    try:
        yield World(reg, build_images(root, reg.host))
    finally:
        reg.stop()


@dataclass
class Node:
    daemon: Daemon
    cd: Containerd


@pytest.fixture
def node(tmp_path: Path, world: World) -> Iterator[Node]:
    daemon = start_daemon(tmp_path / "daemon", f'plain_http_hosts = ["{world.registry.host}"]\n')
    cd = start_containerd(tmp_path / "containerd", proxy_plugins={"lazypull": daemon.address})
    try:
        yield Node(daemon, cd)
    finally:
        cd.stop()
        daemon.stop()
        daemon.stop_layers()
        for m in _mounts_under(tmp_path):
            subprocess.run(["umount", "-l", m], capture_output=True)


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [p[4] for p in (line.split() for line in f) if p[4].startswith(str(root))]


def _fresh(images: list[ImageState]) -> list[ImageState]:
    return [ImageState(im.ref, im.tokens) for im in images]


def _nothing_left(node: Node) -> None:
    """After every image is removed and containerd's collector ran: no layer mounted, no
    mount or held connection left behind."""
    with grpc.insecure_channel(f"unix://{node.daemon.address}") as ch:
        snapshots_pb2_grpc.SnapshotsStub(ch).Cleanup(snapshots_pb2.CleanupRequest())
    assert node.daemon.layers() == []
    layers_dir = node.daemon.root / "layers"
    assert [m for m in _mounts_under(node.daemon.root) if m.startswith(str(layers_dir))] == []
    assert list(layers_dir.iterdir()) == []
    assert node.daemon.proc is not None
    fds = [os.readlink(f"/proc/{node.daemon.proc.pid}/fd/{n}") for n in os.listdir(f"/proc/{node.daemon.proc.pid}/fd")]
    assert [f for f in fds if f == "/dev/fuse"] == []  # every held connection was let go


def test_pulls_runs_and_removals_of_images_sharing_layers(node: Node, world: World, tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    s = Stress(node.cd, node.daemon, _fresh(world.images), seed=seed, faults=False, outdir=tmp_path / "seen")
    out = s.run(ops=240)
    assert out.wrong == [], f"seed {seed}: {out.line()}"
    assert out.failed == [], f"seed {seed}: {out.line()}"
    assert out.ops["run"] >= 60 and out.ops["remove"] >= 10, f"seed {seed}: {out.line()}"
    s.remove_all()
    _nothing_left(node)
    log = node.daemon.log()
    assert "not serving" not in log and "pulling it normally" not in log


def test_with_the_layer_server_killed_and_the_daemon_restarted_no_container_sees_a_partial_tree(
    node: Node, world: World, tmp_path: Path
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    s = Stress(node.cd, node.daemon, _fresh(world.images), seed=seed, faults=True, outdir=tmp_path / "seen")
    out = s.run(ops=200)
    assert out.wrong == [], f"seed {seed}: {out.line()}"
    assert out.ops["fault"] >= 2, f"seed {seed}: {out.line()}"
    # The node recovers: every image pulls and runs with its whole tree.
    node.daemon.stop(signal.SIGTERM)
    node.daemon.start()
    node.cd.wait_for_snapshotter()
    calm = Stress(node.cd, node.daemon, s.images, seed=1, faults=False, outdir=tmp_path / "seen")
    for im in calm.images:
        if not im.present:
            res = node.cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", im.ref, tool="ctr-remote")
            assert res.returncode == 0
            im.present = True
        ok, detail = calm._run(im)
        for _ in range(10):  # containerd redials the restarted daemon with a growing backoff
            if ok or "unavailable" not in detail:
                break
            time.sleep(2)
            ok, detail = calm._run(im)
        assert ok, detail
    assert calm.out.wrong == []
    calm.remove_all()
    _nothing_left(node)
