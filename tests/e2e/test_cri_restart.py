"""A node's restart of its lazypull side keeps a private image whole: the kubelet's
credentials from ``PullImage`` come back from the kernel keyring when the daemon and the
layer server were both stopped (SIGTERM, as ``systemctl restart`` does) and started
again, the layers are mounted again with them, and a new container reads a file never
read before. Real containerd, runc, htpasswd registry, FUSE and keyring."""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from lazypull.service.cri.keyring import KernelKeyring
from lazypull.service.cri.kubelet import Kubelet, Pod, PodTimes
from tests.e2e.test_cri import COLD, CONFIGS, PASSWORD, USER, World, _files_containing, make_node
from tests.e2e.test_cri import world as world
from tests.support.net import wait_for

pytestmark = pytest.mark.e2e


def _stop_layer_servers(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGTERM)

    def gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() for pid in pids)

    wait_for(gone, 30, "the layer servers to exit")


def _run_when_reachable(kubelet: Kubelet, image: str, pods: Path) -> PodTimes:
    """A new pod reading a file never read before; retried as the kubelet does while containerd
    has not dialled the restarted daemon's socket again (its connection backs off)."""
    deadline = time.monotonic() + 120
    for i in itertools.count():
        try:
            pod = Pod(f"after-{i}", pods / f"after-{i}")
            cmd = ["/bin/sh", "-c", "md5sum /app/cold.bin; echo done"]
            return kubelet.run(image, pod, cmd, wait_for="done", pull=False)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:  # type: ignore[attr-defined]
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


@pytest.fixture
def quiet_proxy(world: World) -> Iterator[World]:
    world.proxy.reset_counters()
    yield world


@pytest.mark.parametrize("order", ["together", "daemon-then-server"])
def test_private_image_survives_daemon_and_layer_server_restart(tmp_path: Path, quiet_proxy: World, order: str) -> None:
    """*together*: both units restarted at once (every layer is mounted again by the new
    daemon); *daemon-then-server*: the daemon restarted, the layers kept serving, and later
    the layer server restarted (the running daemon hands the layers to the next one)."""
    world = quiet_proxy
    with make_node(tmp_path, world) as node, Kubelet(node.daemon.address, node.cd.address) as kubelet:
        before = kubelet.run(
            world.image,
            Pod("before", node.root / "pods" / "before"),
            ["/bin/sh", "-c", "md5sum /app/config/a.yaml; echo started"],
            user=f"{USER}:{PASSWORD}",
            wait_for="started",
        )
        assert hashlib.md5(CONFIGS["app/config/a.yaml"]).hexdigest() in before.output
        layers = {r["digest"] for r in node.daemon.layers()}
        assert len(layers) == len(world.layer_sizes)

        # systemctl restart of both units, without an fd store: every lazy mount dies with its server.
        servers = node.daemon.server_processes()
        assert servers
        node.daemon.stop(signal.SIGTERM)
        if order == "together":
            _stop_layer_servers(servers)
        restarted_at = len(node.daemon.log())
        node.daemon.start()
        # the socket appears once restore() ended: every layer is served again, or said why not
        wait_for(lambda: "lazily mounted layers" in node.daemon.log()[restarted_at:], 30, "the daemon's restore")
        after_log = node.daemon.log()[restarted_at:]
        key = world.image.rsplit(":", 1)[0]
        assert f"keychain: credentials for {key} restored from the kernel keyring" in after_log
        assert "requires credentials" not in after_log and "access denied" not in after_log

        if order == "daemon-then-server":
            assert node.daemon.server_processes() == servers  # adopted, not mounted again
            handed_at = len(node.daemon.log())
            _stop_layer_servers(servers)
            n = len(layers)
            wait_for(lambda: f"handed {n} layers back" in node.daemon.log()[handed_at:], 60, "the next layer server")
        blobs_before = world.proxy.blob_bytes()
        after = _run_when_reachable(kubelet, before.image_ref, node.root / "pods")
        assert hashlib.md5(COLD).hexdigest() in after.output  # not an empty layer: the file, fetched now
        assert world.proxy.blob_bytes() - blobs_before >= len(COLD)
        assert {r["digest"] for r in node.daemon.layers()} == layers
        log = node.daemon.log()
        assert "requires credentials" not in log[restarted_at:]
        # The secret went nowhere but the kernel keyring: no log, no file under the daemon's root.
        assert PASSWORD not in log
        assert not _files_containing(node.daemon.root.parent, PASSWORD.encode())
        assert PASSWORD not in Path("/proc/keys").read_text()
        assert [k for k, _ in KernelKeyring().items()] == [key]
