"""The snapshotter daemon with a real containerd, runc, registry and FUSE."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from lazypull.cli.main import main
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Manifest
from lazypull.registry.options import RegistryOptions
from lazypull.registry.repository import RegistryStore
from lazypull.service.proto import snapshots_pb2, snapshots_pb2_grpc
from lazypull.snapshot.layers import abort_connection
from tests.support.containerd import Containerd, start_containerd
from tests.support.daemon import Daemon, start_daemon
from tests.support.images import Entry, busybox_layer, write_image
from tests.support.net import free_port, wait_for
from tests.support.node import stop_node
from tests.support.proxy import Proxy, start_proxy
from tests.support.registry import Registry, start_registry

pytestmark = pytest.mark.e2e

BIG = os.urandom(8 << 20)
OTHER = os.urandom(1 << 20)


@dataclass
class World:
    registry: Registry
    proxy: Proxy
    esgz: str  # eStargz image via the counting proxy
    plain: str  # the original gzip image
    esgz_layers: list[int]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("world")
    reg = start_registry(root / "registry")
    proxy = start_proxy(reg.url)
    try:
        write_image(
            root / "src",
            [
                busybox_layer(),
                [
                    Entry("data", "dir", mode=0o755),
                    Entry("data/big.bin", data=BIG),
                    Entry("data/other.bin", data=OTHER),
                    Entry("data/hello.txt", data=b"hello from a lazy layer\n"),
                ],
            ],
            cmd=["/bin/sh"],
        )
        plain = f"{reg.host}/snap/img:orig"
        assert main(["copy", "--plain-http", f"oci:{root / 'src'}:latest", plain]) == 0
        assert main(["convert", "--plain-http", "--oci", plain, f"{reg.host}/snap/img:esgz"]) == 0
        store = RegistryStore.open(f"{reg.host}/snap/img:esgz", RegistryOptions(plain_http=True))
        d = store.resolve()
        sizes = [x.size for x in Manifest.parse(store.fetch(d), d.media_type).layers]
        yield World(reg, proxy, f"{proxy.host}/snap/img:esgz", plain, sizes)
    finally:
        proxy.stop()
        reg.stop()


@dataclass
class Node:
    daemon: Daemon
    cd: Containerd
    metrics_port: int


@contextmanager
def make_node(root: Path, world: World, containerd_config: str = "") -> Iterator[Node]:
    port = free_port()
    cfg = (
        f'plain_http_hosts = ["{world.proxy.host}", "{world.registry.host}"]\n'
        f'no_background_fetch = true\nmetrics_address = "127.0.0.1:{port}"\n'
        f"prefetch_timeout_sec = 5\n[blob]\nfetching_timeout_sec = 10\nmax_retries = 2\n"
    )
    daemon = start_daemon(root / "daemon", cfg)
    try:
        cd = start_containerd(
            root / "containerd", proxy_plugins={"lazypull": daemon.address}, extra_config=containerd_config
        )
    except BaseException:
        daemon.stop()
        raise
    try:
        yield Node(daemon, cd, port)
    finally:
        stop_node(daemon, cd, root)


@pytest.fixture
def node(tmp_path: Path, world: World) -> Iterator[Node]:
    with make_node(tmp_path, world) as n:
        yield n


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def test_normal_gzip_image_pulls_and_runs(node: Node, world: World) -> None:
    node.cd.ctr("images", "pull", "--plain-http", "--snapshotter", "lazypull", world.plain)
    out = node.cd.ctr(
        "run", "--rm", "--snapshotter", "lazypull", world.plain, "plain1", "/bin/md5sum", "/data/big.bin"
    ).stdout
    assert md5(BIG) in out
    assert not node.daemon.layers()  # nothing was mounted lazily


def test_estargz_rpull_runs_lazily(node: Node, world: World) -> None:
    world.proxy.reset_counters()
    node.cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", world.esgz, tool="ctr-remote")
    after_pull = world.proxy.blob_bytes()
    assert len(node.daemon.layers()) == 2
    out = node.cd.ctr(
        "run",
        "--rm",
        "--snapshotter",
        "lazypull",
        world.esgz,
        "lazy1",
        "/bin/sh",
        "-c",
        "cat /data/hello.txt; md5sum /data/other.bin",
    ).stdout
    assert "hello from a lazy layer" in out and md5(OTHER) in out
    total = sum(world.esgz_layers)
    fetched = world.proxy.blob_bytes()
    # busybox (~1 MB) and other.bin (1 MiB) were read; big.bin (8 MiB) was not.
    assert after_pull < 0.05 * total and fetched < 0.4 * total, (after_pull, fetched, total)
    snaps = node.cd.ctr(
        "snapshots",
        "--snapshotter",
        "lazypull",
        "info",
        node.cd.ctr("snapshots", "--snapshotter", "lazypull", "ls").stdout.split()[3],
    ).stdout
    assert mt.LABEL_REMOTE in snaps
    url = f"http://127.0.0.1:{node.metrics_port}/metrics"
    wait_for(lambda: 'operation="read"' in urllib.request.urlopen(url, timeout=5).read().decode(), 10, "metrics")
    metrics = urllib.request.urlopen(url, timeout=5).read().decode()
    for series in (
        "stargz_fs_operation_duration_seconds_bucket",
        'operation="read"',
        "stargz_cache_hits_total",
        "stargz_cache_requests_total",
        "stargz_bytes_downloaded_total",
        "stargz_fs_operation_duration_milliseconds",
        "stargz_fs_operation_count",
        "stargz_fs_bytes_served",
        "lazypull_layer_index_compact{layer=",  # 0 while a layer's compact index build is deferred
    ):
        assert series in metrics, series


def test_cri_labels_over_grpc(node: Node, world: World) -> None:
    store = RegistryStore.open(world.esgz, RegistryOptions(plain_http=True))
    d = store.resolve()
    m = Manifest.parse(store.fetch(d), d.media_type)
    layer = m.layers[1]
    with grpc.insecure_channel(f"unix://{node.daemon.address}") as ch:
        stub = snapshots_pb2_grpc.SnapshotsStub(ch)
        labels = {
            mt.LABEL_SNAPSHOT_REF: "chain-cri-1",
            mt.LABEL_CRI_IMAGE_REF: world.esgz,
            mt.LABEL_CRI_LAYER_DIGEST: layer.digest,
            mt.LABEL_CRI_IMAGE_LAYERS: ",".join(x.digest for x in m.layers),
            mt.LABEL_CRI_MANIFEST_DIGEST: d.digest,
        }
        with pytest.raises(grpc.RpcError) as ei:
            stub.Prepare(snapshots_pb2.PrepareSnapshotRequest(key="extract-cri-1", labels=labels))
        assert ei.value.code() == grpc.StatusCode.ALREADY_EXISTS
        info = stub.Stat(snapshots_pb2.StatSnapshotRequest(key="chain-cri-1")).info
        assert info.kind == snapshots_pb2.COMMITTED and mt.LABEL_REMOTE in info.labels
        # Usage of a lazy layer: what it stands for, though nothing of it is on disk here. Its
        # inodes as the layer server counted them at the mount: data and its three files, or
        # while its compact index is being built the parsed index's count (root, landmark too).
        usage = stub.Usage(snapshots_pb2.UsageRequest(key="chain-cri-1"))
        assert 4 <= usage.inodes <= 6
        assert usage.size == int(layer.annotations.get(mt.ANNOTATION_UNCOMPRESSED_SIZE, layer.size))
        with pytest.raises(grpc.RpcError) as nf:
            stub.Stat(snapshots_pb2.StatSnapshotRequest(key="extract-cri-1"))
        assert nf.value.code() == grpc.StatusCode.NOT_FOUND
        view = stub.View(snapshots_pb2.ViewSnapshotRequest(key="view-cri", parent="chain-cri-1"))
        src = Path(view.mounts[0].source)
        assert view.mounts[0].type == "bind" and (src / "data/hello.txt").read_bytes() == b"hello from a lazy layer\n"
        # A layer that is not eStargz: containerd is told to pull it (a normal active snapshot).
        plain_labels = {
            mt.LABEL_SNAPSHOT_REF: "chain-plain",
            mt.LABEL_CRI_IMAGE_REF: world.plain,
            mt.LABEL_CRI_LAYER_DIGEST: "sha256:" + "0" * 64,
        }
        resp = stub.Prepare(snapshots_pb2.PrepareSnapshotRequest(key="extract-plain", labels=plain_labels))
        assert resp.mounts[0].type == "bind"
        stub.Remove(snapshots_pb2.RemoveSnapshotRequest(key="view-cri"))
        # The other layer of the image was mounted ahead of its Prepare, in the background.
        wait_for(lambda: len(node.daemon.layers()) == 2, 10, "the ahead-of-time mount")
        from lazypull.format import open_layer

        idx = open_layer(store.blob_source(layer), toc_digest=layer.annotations[mt.ANNOTATION_TOC_DIGEST])
        hello = idx.lookup("data/hello.txt")
        assert hello is not None
        cached = node.daemon.root / "cache" / hello.digest[7:9] / hello.digest[7:]
        wait_for(cached.exists, 10, "the read chunk to reach the disk cache")
        stub.Remove(snapshots_pb2.RemoveSnapshotRequest(key="chain-cri-1"))
        assert len(node.daemon.layers()) == 1  # the prepared layer is gone with its snapshot
        assert not cached.exists()  # ... and so are its cached chunks
        stub.Cleanup(snapshots_pb2.CleanupRequest())  # containerd's GC: unused ahead-of-time mounts go too
        wait_for(lambda: not node.daemon.layers(), 10, "unused mounts to stop")
    assert "will be pulled normally" in node.daemon.log()


def _pb_bytes(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (enough to speak CRI's PullImage without its protos)."""
    n, varint = len(payload), b""
    while True:
        byte, n = n & 0x7F, n >> 7
        varint += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return bytes([field << 3 | 2]) + varint + payload


def test_pull_through_containerds_cri_plugin(tmp_path: Path, world: World) -> None:
    """What the kubelet does: PullImage on containerd's CRI service, snapshotter = lazypull."""
    cri = (
        '[plugins."io.containerd.grpc.v1.cri".containerd]\n'
        '  snapshotter = "lazypull"\n'
        "  disable_snapshot_annotations = false\n"
        f'[plugins."io.containerd.grpc.v1.cri".registry.mirrors."{world.proxy.host}"]\n'
        f'  endpoint = ["http://{world.proxy.host}"]\n'
    )
    with make_node(tmp_path, world, cri) as node:
        world.proxy.reset_counters()
        request = _pb_bytes(1, _pb_bytes(1, world.esgz.encode()))  # PullImageRequest{image: ImageSpec{image}}
        with grpc.insecure_channel(f"unix://{node.cd.address}") as ch:
            pull = ch.unary_unary("/runtime.v1.ImageService/PullImage")
            reply = pull(request, timeout=120)
        assert b"sha256:" in reply  # PullImageResponse{image_ref}
        assert len(node.daemon.layers()) == 2  # both layers mounted lazily, from CRI's labels
        assert world.proxy.blob_bytes() < 0.05 * sum(world.esgz_layers)
        node.cd.namespace = "k8s.io"  # where the CRI plugin keeps images
        snaps = node.cd.ctr("snapshots", "--snapshotter", "lazypull", "ls").stdout
        assert snaps.count("Committed") == 2
        out = node.cd.ctr(
            "run", "--rm", "--snapshotter", "lazypull", world.esgz, "cri1", "/bin/md5sum", "/data/other.bin"
        ).stdout
        assert md5(OTHER) in out
        assert world.proxy.blob_bytes() < 0.4 * sum(world.esgz_layers)


def test_daemon_kill9_keeps_containers_serving(node: Node, world: World) -> None:
    node.cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", world.esgz, tool="ctr-remote")
    node.cd.ctr("run", "-d", "--snapshotter", "lazypull", world.esgz, "long1", "/bin/sleep", "300")
    node.daemon.stop(signal.SIGKILL)
    out = node.cd.ctr("tasks", "exec", "--exec-id", "e1", "long1", "/bin/md5sum", "/data/big.bin").stdout
    assert md5(BIG) in out
    node.daemon.start()
    assert "restored 2 lazily mounted layers" in node.daemon.log()
    out = node.cd.ctr("tasks", "exec", "--exec-id", "e2", "long1", "/bin/cat", "/data/hello.txt").stdout
    assert "hello from a lazy layer" in out
    node.cd.ctr("tasks", "kill", "-s", "KILL", "long1")
    wait_for(
        lambda: "STOPPED" in node.cd.ctr("tasks", "ls").stdout or "long1" not in node.cd.ctr("tasks", "ls").stdout,
        20,
        "task to stop",
    )
    node.cd.ctr("tasks", "delete", "long1", check=False)
    node.cd.ctr("containers", "delete", "long1", check=False)
    # new pulls work after the restart (once containerd's gRPC client has reconnected)
    node.cd.wait_for_snapshotter()
    node.cd.ctr("images", "pull", "--plain-http", "--snapshotter", "lazypull", world.plain)
    assert (
        md5(BIG)
        in node.cd.ctr(
            "run", "--rm", "--snapshotter", "lazypull", world.plain, "after1", "/bin/md5sum", "/data/big.bin"
        ).stdout
    )


def test_corrupted_blob_gives_eio_and_daemon_stays_up(node: Node, world: World, tmp_path: Path) -> None:
    # Push a separate copy so the shared image stays intact.
    bad_ref = f"{world.registry.host}/snap/bad:esgz"
    assert main(["copy", "--plain-http", world.esgz.replace(world.proxy.host, world.registry.host), bad_ref]) == 0
    store = RegistryStore.open(bad_ref, RegistryOptions(plain_http=True))
    d = store.resolve()
    layer = Manifest.parse(store.fetch(d), d.media_type).layers[1]
    from lazypull.format import open_layer

    idx = open_layer(store.blob_source(layer), toc_digest=layer.annotations[mt.ANNOTATION_TOC_DIGEST])
    other = idx.lookup("data/other.bin")
    assert other is not None
    path = world.registry.blob_data_path(layer.digest)
    original = path.read_bytes()
    try:
        data = bytearray(original)
        data[other.chunks[0].blob_offset + 100] ^= 0xFF
        path.write_bytes(bytes(data))
        node.cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", bad_ref, tool="ctr-remote")
        res = node.cd.ctr(
            "run",
            "--rm",
            "--snapshotter",
            "lazypull",
            bad_ref,
            "bad1",
            "/bin/sh",
            "-c",
            "cat /data/hello.txt; md5sum /data/other.bin; echo rc=$?",
            check=False,
        )
        assert "hello from a lazy layer" in res.stdout
        assert md5(OTHER) not in res.stdout
        assert "rc=1" in res.stdout and ("Input/output error" in res.stderr + res.stdout)
        assert node.daemon.proc is not None and node.daemon.proc.poll() is None
    finally:
        path.write_bytes(original)


def test_access_recording_for_optimize(tmp_path: Path, world: World) -> None:
    cfg = f'plain_http_hosts = ["{world.proxy.host}"]\nno_background_fetch = true\nrecord_access = true\n'
    daemon = start_daemon(tmp_path / "daemon", cfg)
    cd = start_containerd(tmp_path / "containerd", proxy_plugins={"lazypull": daemon.address})
    try:
        cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", world.esgz, tool="ctr-remote")
        cd.ctr("run", "--rm", "--snapshotter", "lazypull", world.esgz, "rec1", "/bin/cat", "/data/hello.txt")
        records = lambda: [p for r in daemon.fsd().stats(accessed=True)["layers"] for p in r["accessed"]]  # noqa: E731
        wait_for(
            lambda: "/data/hello.txt" in records() and "/bin/busybox" in records(),
            10,
            "access records of both layers",
        )
        assert "/data/big.bin" not in records()
    finally:
        stop_node(daemon, cd, tmp_path)


def _layer_with(node: Node, name: str) -> Path:
    for r in node.daemon.layers():
        if (Path(r["mountpoint"]) / name).exists():
            return Path(r["mountpoint"])
    raise AssertionError(f"no mounted layer has {name}")


def test_layer_server_kill9_fails_or_finishes_reads_and_comes_back(node: Node, world: World) -> None:
    """kill -9 of the layer server during a slow read: the read ends (EIO or data), never hangs;
    its fd holder starts a new server with the connections, and reads work without a remount."""
    node.cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", world.esgz, tool="ctr-remote")
    node.cd.ctr("run", "-d", "--snapshotter", "lazypull", world.esgz, "srv1", "/bin/sleep", "300")
    mp = _layer_with(node, "data/big.bin")
    dev = os.stat(mp).st_dev
    result: dict[str, object] = {}

    def reader() -> None:
        try:
            result["data"] = (mp / "data/big.bin").read_bytes()
        except OSError as e:
            result["errno"] = e.errno

    world.proxy.faults.delay_s = 3.0  # the read waits on the registry when the server dies
    try:
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        time.sleep(1.0)
        [pid] = node.daemon.server_processes()
        os.kill(pid, signal.SIGKILL)
        t.join(30)
        assert not t.is_alive(), "a read hung after the layer server died"
    finally:
        world.proxy.faults.delay_s = 0.0
    assert result.get("errno") in (errno.EIO, errno.ECONNABORTED) or md5(result["data"]) == md5(BIG), result.keys()  # type: ignore[arg-type]
    # Its fd holder starts the next one with the connections (the daemon's copies not needed).
    wait_for(lambda: "serves the 2 layers it had without us" in node.daemon.log(), 30, "the next layer server")
    assert len(node.daemon.layers()) == 2 and node.daemon.server_processes() != [pid]
    assert os.stat(mp).st_dev == dev  # the same mount: nothing was remounted
    assert md5((mp / "data/big.bin").read_bytes()) == md5(BIG)
    out = node.cd.ctr("tasks", "exec", "--exec-id", "x1", "srv1", "/bin/md5sum", "/data/other.bin").stdout
    assert md5(OTHER) in out
    node.cd.ctr("tasks", "kill", "-s", "KILL", "srv1")


def test_layers_outlive_the_daemon_then_the_layer_server_killed(node: Node, world: World) -> None:
    """kill -9 of the daemon, then of the layer server it started (no systemd): nobody but the
    server's fd holder has the connections; it starts a new server with them, the running
    container keeps reading, and a new daemon adopts every layer without mounting it again."""
    node.cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", world.esgz, tool="ctr-remote")
    node.cd.ctr("run", "-d", "--snapshotter", "lazypull", world.esgz, "both1", "/bin/sleep", "300")
    mp = _layer_with(node, "data/big.bin")
    dev = os.stat(mp).st_dev
    node.daemon.stop(signal.SIGKILL)
    [pid] = node.daemon.server_processes()
    os.kill(pid, signal.SIGKILL)
    out = node.cd.ctr("tasks", "exec", "--exec-id", "b1", "both1", "/bin/md5sum", "/data/big.bin").stdout
    assert md5(BIG) in out  # asked while no server ran: queued, then answered by the next one
    assert node.daemon.server_processes() not in ([], [pid]) and os.stat(mp).st_dev == dev
    assert [r["state"] for r in node.daemon.layers()] == ["serving", "serving"]
    restarted_at = len(node.daemon.log())
    node.daemon.start()
    log = node.daemon.log()[restarted_at:]
    assert "restored 2 lazily mounted layers" in log and "mounting it again" not in log
    assert os.stat(mp).st_dev == dev
    out = node.cd.ctr("tasks", "exec", "--exec-id", "b2", "both1", "/bin/cat", "/data/hello.txt").stdout
    assert "hello from a lazy layer" in out
    node.cd.ctr("tasks", "kill", "-s", "KILL", "both1")


def test_layer_server_upgrade_finishes_reads_in_flight_and_fails_none(node: Node, world: World) -> None:
    """SIGHUP (systemctl reload) of the layer server while a read waits on a slow registry: the
    successor takes every layer over beside it, the old one answers the read it holds and exits;
    nothing fails, nothing is remounted, the daemon has nothing to hand back."""
    node.cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", world.esgz, tool="ctr-remote")
    node.cd.ctr("run", "-d", "--snapshotter", "lazypull", world.esgz, "up1", "/bin/sleep", "300")
    mp = _layer_with(node, "data/big.bin")
    dev = os.stat(mp).st_dev
    result: dict[str, object] = {}

    def reader() -> None:
        try:
            result["data"] = (mp / "data/big.bin").read_bytes()
        except OSError as e:
            result["errno"] = e.errno

    [pid] = node.daemon.server_processes()
    world.proxy.faults.delay_s = 2.0
    try:
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        time.sleep(0.5)
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: node.daemon.server_processes() not in ([], [pid]), 30, "the successor alone")
        t.join(30)
        assert not t.is_alive(), "a read hung during the upgrade"
    finally:
        world.proxy.faults.delay_s = 0.0
    assert "errno" not in result and md5(result["data"]) == md5(BIG)  # type: ignore[arg-type]
    assert os.stat(mp).st_dev == dev
    out = node.cd.ctr("tasks", "exec", "--exec-id", "x1", "up1", "/bin/md5sum", "/data/other.bin").stdout
    assert md5(OTHER) in out
    wait_for(lambda: "layer server replaced" in node.daemon.log(), 30, "the daemon to notice the new server")
    assert "handed" not in node.daemon.log()  # it served every layer already
    assert [r["state"] for r in node.daemon.layers()] == ["serving", "serving"]
    node.cd.ctr("tasks", "kill", "-s", "KILL", "up1")


def _serves(mp: Path) -> bool:
    try:
        os.statvfs(mp)  # FUSE never caches STATFS: an answer means the layer is served
        return os.path.ismount(mp)  # ... and not the empty directory below it
    except OSError:
        return False


def _metrics(node: Node) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5).read().decode()


def test_dead_layer_is_detected_remounted_and_never_adopted(node: Node, world: World) -> None:
    """Fault injection: a layer's FUSE connection is aborted (as if its serving died)."""
    store = RegistryStore.open(world.esgz, RegistryOptions(plain_http=True))
    d = store.resolve()
    m = Manifest.parse(store.fetch(d), d.media_type)
    labels = {
        mt.LABEL_SNAPSHOT_REF: "chain-dead-1",
        mt.LABEL_CRI_IMAGE_REF: world.esgz,
        mt.LABEL_CRI_LAYER_DIGEST: m.layers[1].digest,
        mt.LABEL_CRI_IMAGE_LAYERS: ",".join(x.digest for x in m.layers),
    }
    with grpc.insecure_channel(f"unix://{node.daemon.address}") as ch:
        stub = snapshots_pb2_grpc.SnapshotsStub(ch)
        for attempt in range(2):
            with pytest.raises(grpc.RpcError) as ei:
                stub.Prepare(snapshots_pb2.PrepareSnapshotRequest(key=f"extract-dead-{attempt}", labels=labels))
            assert ei.value.code() == grpc.StatusCode.ALREADY_EXISTS
            mp = _layer_with(node, "data/hello.txt")
            assert _serves(mp)  # "already exists" only for a layer that is served
            if attempt == 0:
                assert abort_connection(mp)
                assert not _serves(mp)
    assert "is not serving: mounting it again" in node.daemon.log()
    # The health loop (no Prepare involved) finds a layer that dies later.
    assert abort_connection(mp)
    assert not _serves(mp)
    wait_for(lambda: _serves(mp), 30, "the health loop to remount the layer")
    assert (mp / "data/hello.txt").read_bytes() == b"hello from a lazy layer\n"
    assert "lazypull_layer_unhealthy_total 1.0" in _metrics(node)
    assert 'lazypull_layer_health{layer="' in _metrics(node)
    # A daemon restart never adopts a dead layer: it is mounted again.
    node.daemon.stop(signal.SIGKILL)
    assert abort_connection(mp)
    node.daemon.start()
    assert "is dead; mounting it again" in node.daemon.log()
    assert _serves(mp) and (mp / "data/other.bin").read_bytes() == OTHER


def test_wedged_layer_server_is_replaced(node: Node, world: World) -> None:
    """A server that stops answering (SIGSTOP: as wedged as it gets) is killed and replaced;
    the layers come back on the same mounts."""
    node.cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", world.esgz, tool="ctr-remote")
    mp = _layer_with(node, "data/hello.txt")
    dev = os.stat(mp).st_dev
    [pid] = node.daemon.server_processes()
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: "does not answer; starting a new one" in node.daemon.log(), 30, "the wedge to be noticed")
        wait_for(lambda: "serves the 2 layers it had without us" in node.daemon.log(), 30, "a new layer server")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert pid not in node.daemon.server_processes()
    assert os.stat(mp).st_dev == dev and (mp / "data/hello.txt").read_bytes() == b"hello from a lazy layer\n"


def test_planned_layer_server_restart_fails_no_request(node: Node, world: World) -> None:
    """SIGTERM (a stop or upgrade): the server answers what it has in flight and exits; requests
    made until the daemon has started the next one wait in the kernel and are then answered."""
    node.cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", world.esgz, tool="ctr-remote")
    mp = _layer_with(node, "data/big.bin")
    errors: list[int] = []
    served = [0]
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            try:
                os.statvfs(mp)  # never cached: every call is a request to the layer server
                served[0] += 1
            except OSError as e:
                errors.append(e.errno)
            time.sleep(0.01)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    try:
        time.sleep(0.3)
        [pid] = node.daemon.server_processes()
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: "handed 2 layers back" in node.daemon.log(), 30, "the next layer server")
        before = served[0]
        wait_for(lambda: served[0] > before + 5, 10, "requests answered by the new server")
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive() and errors == []
    assert md5((mp / "data/big.bin").read_bytes()) == md5(BIG)
