"""The layer server in-process with real FUSE mounts, through its control socket."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.format import build_estargz
from lazypull.fs.fsdclient import FsdClient, FsdError, socket_path
from lazypull.fs.spec import LayerSpec
from lazypull.oci import mediatypes as mt
from lazypull.service.layerserver import LayerServer, serve_control, take_over
from tests.support.images import Entry, make_tar


def make_layer(
    tmp: Path, name: str, files: dict[str, bytes], prioritized: list[str] | None = None
) -> tuple[Path, dict[str, object]]:
    out = io.BytesIO()
    tar = io.BytesIO(make_tar([Entry(n, data=d) for n, d in files.items()]))
    res = build_estargz(tar, out, chunk_size=256 << 10, prioritized_files=prioritized or [])
    blob = out.getvalue()
    path = tmp / f"{name}.blob"
    path.write_bytes(blob)
    desc = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
        "annotations": {mt.ANNOTATION_TOC_DIGEST: res.toc_digest},
    }
    return path, desc


class Slow:
    """Blocks the data reads of a layer's source until released (a registry that stalls)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.release = threading.Event()

    @property
    def size(self) -> int:
        return self.inner.size  # type: ignore[attr-defined]

    def read_at(self, offset: int, length: int) -> bytes:
        self.release.wait(30)
        return self.inner.read_at(offset, length)  # type: ignore[attr-defined]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[LayerServer, FsdClient]]:
    srv = LayerServer(tmp_path / "fsd", memory_bytes=1 << 20)
    (tmp_path / "fsd").mkdir()
    addr = socket_path(tmp_path / "fsd")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(addr))
    sock.listen(8)
    threading.Thread(target=serve_control, args=(srv, sock), daemon=True).start()
    try:
        yield srv, FsdClient(addr)
    finally:
        for m in list(srv.layers):
            srv.unmount(m)
        sock.close()


def spec(tmp: Path, blob: Path, desc: dict[str, object], **kw: object) -> dict[str, object]:
    s = LayerSpec(
        layer=desc, cache_dir=str(tmp / "cache"), blob_path=str(blob), prefetch=False, background_fetch=False, **kw
    )  # type: ignore[arg-type]
    return s.to_json()


def test_one_cache_bound_for_all_layers(server: tuple[LayerServer, FsdClient], tmp_path: Path) -> None:
    srv, client = server
    a, b = os.urandom(2 << 20), os.urandom(2 << 20)
    la = make_layer(tmp_path, "a", {"a.bin": a})
    lb = make_layer(tmp_path, "b", {"b.bin": b})
    for name, (blob, desc) in (("m1", la), ("m2", lb)):
        _, fd = client.mount(spec(tmp_path, blob, desc, cache_max_bytes=3 << 20), tmp_path / name, timeout=30)
        os.close(fd)
    assert (tmp_path / "m1/a.bin").read_bytes() == a
    assert (tmp_path / "m2/b.bin").read_bytes() == b
    assert len(srv.caches) == 1  # one cache (one bound) for both layers
    [cache] = srv.caches.values()
    cache.flush()
    on_disk = sum(f.stat().st_size for f in (tmp_path / "cache").rglob("*") if f.is_file())
    assert on_disk <= 3 << 20 and cache.disk_bytes <= 3 << 20  # per-layer bounds would keep 4 MiB
    assert [r["state"] for r in client.list()] == ["serving", "serving"]
    stats = client.stats()
    assert stats["memory_bytes"] <= 1 << 20  # one memory budget
    deadline = time.monotonic() + 10  # written in the background (giving way to requests)
    while len(list((tmp_path / "fsd" / "tocs").glob("*.index.v1"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(list((tmp_path / "fsd" / "tocs").glob("*.index.v1"))) == 2  # one compact index file each
    deadline = time.monotonic() + 10
    while {r["index"] for r in client.stats()["layers"]} != {"compact"} and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [r["index"] for r in client.stats()["layers"]] == ["compact", "compact"]
    client.unmount(tmp_path / "m1", free_cache=True)
    assert not os.path.ismount(tmp_path / "m1") and len(client.list()) == 1
    assert len(list((tmp_path / "fsd" / "tocs").glob("*.index.v1"))) == 1


def test_metadata_answers_while_reads_wait_on_the_registry(
    server: tuple[LayerServer, FsdClient], tmp_path: Path
) -> None:
    srv, client = server
    files = {f"f{i}.bin": os.urandom(300 << 10) for i in range(24)}
    blob, desc = make_layer(tmp_path, "slow", files)
    _, fd = client.mount(spec(tmp_path, blob, desc), tmp_path / "m", timeout=30)
    os.close(fd)
    ly = srv.layers[str(tmp_path / "m")]
    assert ly.fetcher is not None
    slow = Slow(ly.fetcher.source)
    ly.fetcher.source = slow  # type: ignore[assignment]
    readers = [
        threading.Thread(target=(tmp_path / "m" / n).read_bytes, daemon=True) for n in files
    ]  # more stalled reads than there are data threads
    for t in readers:
        t.start()
    try:
        time.sleep(0.5)
        names = sorted(os.listdir(tmp_path / "m"))
        sizes = {n: os.stat(tmp_path / "m" / n).st_size for n in names}
        os.statvfs(tmp_path / "m")
        assert all(t.is_alive() for t in readers)  # metadata answered while every read still waits
        assert names == sorted(files) and all(sizes[n] == len(files[n]) for n in files)
    finally:
        slow.release.set()
    for t in readers:
        t.join(30)
    assert all((tmp_path / "m" / n).read_bytes() == d for n, d in files.items())


def test_a_mount_that_fails_leaves_no_build_behind(
    server: tuple[LayerServer, FsdClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lazypull import giveway
    from lazypull.fs import layer
    from lazypull.fs.fuse.server import FuseSession

    _srv, client = server
    blob, desc = make_layer(tmp_path, "x", {"x": b"x"})
    builds = giveway.Builds(defer_sec=60, max_defer_sec=60)  # this test's own queue, in no hurry
    monkeypatch.setattr(layer, "builds", builds)

    def refuse(self: FuseSession) -> None:
        raise OSError(errno.EPERM, "mount refused")

    with monkeypatch.context() as m:
        m.setattr(FuseSession, "mount", refuse)
        with pytest.raises(FsdError, match="mount refused"):
            client.mount(spec(tmp_path, blob, desc), tmp_path / "m", timeout=30)
    assert builds.pending() == 0 and client.list() == []
    _, fd = client.mount(spec(tmp_path, blob, desc), tmp_path / "m", timeout=30)  # the same layer, mounted
    os.close(fd)
    assert builds.pending() == 1  # its build waits (deferred) in the queue the failed one left empty
    assert [r["index"] for r in client.stats()["layers"]] == ["parsed"]  # served meanwhile from its TOC


def test_bad_requests_get_one_line_errors(server: tuple[LayerServer, FsdClient], tmp_path: Path) -> None:
    _srv, client = server
    with pytest.raises(FsdError, match="unknown request"):
        client.call("nope")
    blob, desc = make_layer(tmp_path, "x", {"x": b"x"})
    desc["annotations"] = {mt.ANNOTATION_TOC_DIGEST: "sha256:" + "0" * 64}  # not this layer's TOC
    with pytest.raises(FsdError):
        client.mount(spec(tmp_path, blob, desc), tmp_path / "bad", timeout=30)
    assert not os.path.ismount(tmp_path / "bad") and client.list() == []


def test_an_exit_when_idle_sends_the_failed_mounts_reply_first(
    server: tuple[LayerServer, FsdClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server started for one mount goes idle as that mount fails: its exit (drain, then
    # the process ends) must wait for the reply that says why, not close the connection.
    from lazypull.service import layerserver

    srv, client = server
    srv.exit_when_idle = True
    order: list[str] = []
    real_send = layerserver.send_msg

    def late_send(conn: socket.socket, reply: dict[str, object], fds: list[int]) -> None:
        srv.idle.wait(10)
        time.sleep(0.3)  # the reply leaves well after the server went idle
        real_send(conn, reply, fds)
        order.append("replied")

    def exit_when_idle() -> None:
        srv.idle.wait(30)
        srv.drain()
        order.append("exited")

    monkeypatch.setattr(layerserver, "send_msg", late_send)
    exiting = threading.Thread(target=exit_when_idle, daemon=True)
    exiting.start()
    blob, desc = make_layer(tmp_path, "x", {"x": b"x"})
    desc["annotations"] = {mt.ANNOTATION_TOC_DIGEST: "sha256:" + "0" * 64}  # not this layer's TOC
    with pytest.raises(FsdError, match="TOC"):
        client.mount(spec(tmp_path, blob, desc), tmp_path / "bad", timeout=30)
    exiting.join(10)
    assert order == ["replied", "exited"]


@pytest.mark.parametrize(
    "secret",
    [{"user": "alice:s3cret"}, {"credential": {"username": "alice", "secret": "s3cret", "identity_token": False}}],
    ids=["user", "kubelet-credential"],
)
def test_saved_state_has_no_credentials(
    server: tuple[LayerServer, FsdClient], tmp_path: Path, secret: dict[str, object]
) -> None:
    _srv, client = server
    blob, desc = make_layer(tmp_path, "c", {"c": b"c"})
    s = spec(tmp_path, blob, desc)
    s["registry"] = {**secret, "plain_http": True}
    assert LayerSpec.from_json(s).has_secrets
    _, fd = client.mount(s, tmp_path / "m", timeout=30)
    os.close(fd)
    [state] = (tmp_path / "fsd" / "layers").glob("*.json")
    saved = state.read_text()
    assert "s3cret" not in saved and str(tmp_path / "m") in saved
    assert (os.stat(state).st_mode & 0o777) == 0o600
    assert not any(b"s3cret" in f.read_bytes() for f in (tmp_path / "fsd").rglob("*") if f.is_file())


def test_restart_through_systemds_fd_store(tmp_path: Path) -> None:
    """What systemd does for lazypull-fsd.service, with a test notify socket: the server
    stores each layer's fd (FDSTORE=1), is killed, and its successor gets the fds back
    (LISTEN_FDS) and serves the same mounts; a read made while no server runs completes."""
    import signal
    import subprocess
    import sys

    data = os.urandom(1 << 20)
    blob, desc = make_layer(tmp_path, "s", {"a.bin": data, "b.bin": data[::-1]})
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    root = tmp_path / "fsd"
    addr = socket_path(root)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    cmd = [sys.executable, "-m", "lazypull.service.fsd", "--root", str(root), "--address", str(addr)]
    first = subprocess.Popen(cmd, env=env)
    procs = [first]
    mp = tmp_path / "m"
    try:
        client = FsdClient(addr)
        deadline = time.monotonic() + 30
        while client.alive() is None:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        _, fd = client.mount(spec(tmp_path, blob, desc), mp, timeout=30)
        os.close(fd)  # no daemon holds a copy here: only the fd store
        assert (mp / "a.bin").read_bytes() == data
        stored: dict[str, int] = {}
        notify.settimeout(5)
        while not stored:
            msg, fds, _, _ = socket.recv_fds(notify, 4096, 4)
            fields = dict(line.split("=", 1) for line in msg.decode().splitlines() if "=" in line)
            if fields.get("FDSTORE") == "1":
                stored[fields["FDNAME"]] = fds[0]
            else:
                for f in fds:
                    os.close(f)
        dev = os.stat(mp).st_dev
        while not list((root / "tocs").glob("*.index.v1")):  # written in the background
            assert time.monotonic() < deadline + 30
            time.sleep(0.02)
        [index] = (root / "tocs").glob("*.index.v1")
        index_ino = index.stat().st_ino
        assert index.stat().st_mode & 0o777 == 0o600
        first.send_signal(signal.SIGKILL)
        first.wait()
        got: dict[str, bytes] = {}
        reader = threading.Thread(target=lambda: got.update(b=(mp / "b.bin").read_bytes()), daemon=True)
        reader.start()  # queued in the kernel while no server runs
        time.sleep(0.5)
        assert reader.is_alive()
        [(name, held)] = stored.items()
        shell = f'exec 3<&{held} {held}<&-; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES={name} exec "$@"'
        second = subprocess.Popen(["bash", "-c", shell, "fsd", *cmd], env=env, pass_fds=(held,))
        procs.append(second)
        os.close(held)
        reader.join(30)
        assert not reader.is_alive() and got["b"] == data[::-1]
        assert os.stat(mp).st_dev == dev and (mp / "a.bin").read_bytes() == data
        assert [r["state"] for r in client.list()] == ["serving"]
        assert index.stat().st_ino == index_ino  # the successor mapped the same file
        client.shutdown(unmount_all=True)
        second.wait(20)
        assert not index.exists()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if os.path.ismount(mp):
            subprocess.run(["umount", "-l", str(mp)], check=False)
        notify.close()


def test_a_successor_opens_the_layers_while_the_old_server_serves_and_takes_the_handed_table(
    server: tuple[LayerServer, FsdClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A successor opens every layer (cache, index) before asking for the handover, while the old
    server still serves and takes changes; at the handover it keeps what it opened for the same
    mount and spec, and follows what changed meanwhile: a layer mounted since (its saved row is
    read then), one unmounted since (dropped), one whose credential was rotated (opened again)."""
    old, client = server
    layers = {n: make_layer(tmp_path, n, {f"{n}.txt": n.encode() * 100}) for n in "abcd"}

    def mount(n: str) -> None:
        _, fd = client.mount(spec(tmp_path, *layers[n]), tmp_path / n, timeout=30)
        os.close(fd)

    for n in "abc":
        mount(n)
    new = LayerServer(tmp_path / "fsd", memory_bytes=1 << 20)
    new.load_saved()
    ahead: dict[str, object] = {}
    prepare = new.prepare

    def prepare_then_change(specs: dict[str, tuple[str, LayerSpec]]) -> None:
        prepare(specs)
        ahead.update({mp: ly.fs for mp, ly in new.layers.items() if ly.fs is not None})
        mount("d")
        client.unmount(tmp_path / "b")
        rotated = spec(tmp_path, *layers["c"])
        rotated["registry"] = {"credential": {"username": "robot", "secret": "rotated"}}
        assert client.renew(rotated, tmp_path / "c")

    monkeypatch.setattr(new, "prepare", prepare_then_change)
    got = take_over(new, socket_path(tmp_path / "fsd"))
    assert got is not None
    got[0].close()
    try:
        path = {n: str(tmp_path / n) for n in "abcd"}
        assert sorted(ahead) == [path[n] for n in "abc"]  # opened before the handover
        assert sorted(new.layers) == [path[n] for n in "acd"]
        assert [ly.state for ly in new.layers.values()] == ["serving"] * 3
        assert new.layers[path["a"]].fs is ahead[path["a"]]  # served as opened ahead
        assert new.layers[path["c"]].fs is not ahead[path["c"]]  # opened again, with its new credential
        assert new.layers[path["c"]].spec.registry["credential"]["secret"] == "rotated"
        old.drain()  # the old server stops reading: the successor alone answers
        for n in "acd":
            assert (tmp_path / n / f"{n}.txt").read_bytes() == n.encode() * 100
    finally:
        for ly in new.layers.values():
            if ly.session is not None:
                new.loop.remove(ly.session)
                ly.session.close()


def test_a_drain_waits_for_the_requests_reader_threads_hold(
    server: tuple[LayerServer, FsdClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retiring (or stopping) server exits once it answered every request it read: one being
    answered on a reader thread (metadata: here a slow STATFS) too, not only reads queued for
    data threads; an exit before would abort it (the reader would get an error)."""
    srv, client = server
    blob, desc = make_layer(tmp_path, "d", {"d.txt": b"d"})
    _, fd = client.mount(spec(tmp_path, blob, desc), tmp_path / "m", timeout=30)
    os.close(fd)
    fs = srv.layers[str(tmp_path / "m")].fs
    assert fs is not None
    statfs = fs.statfs

    def slow_statfs() -> tuple[int, int]:
        time.sleep(0.5)
        return statfs()

    monkeypatch.setattr(fs, "statfs", slow_statfs)
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(os.statvfs(tmp_path / "m")), daemon=True)
    t.start()
    time.sleep(0.2)  # read, and being answered on a reader thread
    t0 = time.monotonic()
    srv.drain()
    assert time.monotonic() - t0 > 0.2  # it waited for that answer
    t.join(5)
    assert len(got) == 1


def test_a_fresh_servers_first_mount_imports_nothing(tmp_path: Path) -> None:
    """The server imports the registry stack at its start: the first layer's Prepare does not wait for it."""
    _blob, desc = make_layer(tmp_path, "a", {"a.txt": b"a"})
    probe = f"""
import sys
from pathlib import Path
from lazypull.cache.chunks import ChunkCache
from lazypull.errors import LazypullError
from lazypull.fs.spec import LayerSpec, open_layer_fs
from lazypull.service import layerserver
layerserver.preload()
before = set(sys.modules)
spec = LayerSpec(layer={desc!r}, cache_dir={str(tmp_path / "c")!r}, ref="127.0.0.1:9/x/y:z",
                 registry={{"plain_http": True}}, max_retries=0, fetch_timeout_sec=2)
try:
    open_layer_fs(spec, ChunkCache(Path({str(tmp_path / "c")!r})))
except LazypullError:
    pass  # nothing listens there: the mount fails after everything it needs was imported
print(sorted(m for m in set(sys.modules) - before if m.startswith("lazypull")))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_upgrade_hands_every_layer_over_without_a_gap(tmp_path: Path) -> None:
    """SIGHUP (`kill -HUP`; the unit's reload runs --reload instead): the server starts its
    successor with --takeover, hands it each layer's fd, both serve until the successor holds
    the socket, and the old one exits.
    Reads made all along (each a new file, so each reaches a server) all succeed; the mounts and
    the control socket stay where they were; systemd is told the new main pid before the old exits."""
    import signal
    import subprocess
    import sys

    files = {f"f{i:03}.bin": os.urandom(16 << 10) for i in range(400)}
    blob, desc = make_layer(tmp_path, "u", files)
    blob2, desc2 = make_layer(tmp_path, "v", {"other.txt": b"second layer\n"})
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    root = tmp_path / "fsd"
    addr = socket_path(root)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    cmd = [sys.executable, "-m", "lazypull.service.fsd", "--root", str(root), "--address", str(addr)]
    first = subprocess.Popen(cmd, env=env)
    mp, mp2 = tmp_path / "m", tmp_path / "m2"
    successor = 0
    try:
        client = FsdClient(addr)
        deadline = time.monotonic() + 30
        while client.alive() is None:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        st = client.alive()
        assert st is not None
        _, fd = client.mount(spec(tmp_path, blob, desc), mp, timeout=30)
        os.close(fd)
        _, fd = client.mount(spec(tmp_path, blob2, desc2), mp2, timeout=30)
        os.close(fd)
        dev = os.stat(mp).st_dev
        errors: list[str] = []
        slowest = [0.0]
        done = threading.Event()

        def reader() -> None:
            names = sorted(files)
            i = 0
            while not done.is_set() and i < len(names):
                t0 = time.monotonic()
                try:
                    if (mp / names[i]).read_bytes() != files[names[i]]:
                        errors.append(f"{names[i]}: wrong bytes")
                except OSError as e:
                    errors.append(f"{names[i]}: {e}")
                slowest[0] = max(slowest[0], time.monotonic() - t0)
                i += 1
                time.sleep(0.01)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        time.sleep(0.3)
        first.send_signal(signal.SIGHUP)
        assert first.wait(60) == 0  # retired once its successor serves
        new = client.alive()
        assert new is not None and new["instance"] != st["instance"] and new["pid"] != first.pid
        successor = int(new["pid"])
        t.join(60)
        done.set()
        assert not errors, errors[:5]
        assert os.stat(mp).st_dev == dev and (mp2 / "other.txt").read_bytes() == b"second layer\n"
        assert sorted(r["state"] for r in client.list()) == ["serving", "serving"]
        notify.settimeout(1)
        said = []
        with contextlib.suppress(TimeoutError):
            while True:
                msg, fds, _, _ = socket.recv_fds(notify, 4096, 8)
                for f in fds:
                    os.close(f)
                said.append(msg.decode())
        assert any(f"MAINPID={successor}" in m and "READY=1" not in m for m in said)  # before the old one exited
        assert not any("STOPPING=1" in m for m in said)  # the service never stopped
        print(f"\nupgrade: slowest read during the handover {slowest[0] * 1000:.0f} ms")
        client.shutdown(unmount_all=True)
        deadline = time.monotonic() + 20
        while _alive(successor) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        if successor and _alive(successor):
            os.kill(successor, signal.SIGKILL)
        for m in (mp, mp2):
            if os.path.ismount(m):
                subprocess.run(["umount", "-l", str(m)], check=False)
        notify.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_long_lived_processes_load_no_numpy() -> None:
    """numpy (present for the fsspec API and the tests) costs 15 MB per process: the daemon
    and the layer server never need it (flatbuffers would load it, were it imported)."""
    probe = (
        "import sys; import lazypull.service.main; from lazypull.service import layerserver; layerserver.preload(); "
        "print(sorted(m for m in ('numpy', 'flatbuffers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_renew_hands_a_serving_layer_a_rotated_credential_and_never_mounts(
    server: tuple[LayerServer, FsdClient], tmp_path: Path
) -> None:
    srv, client = server
    blob, desc = make_layer(tmp_path, "r", {"r": b"r"})
    s = spec(tmp_path, blob, desc)
    s["registry"] = {"credential": {"username": "robot", "secret": "old-s3cret"}, "plain_http": True}
    _, fd = client.mount(s, tmp_path / "m", timeout=30)
    os.close(fd)
    new = {**s, "registry": {"credential": {"username": "robot", "secret": "new-s3cret"}, "plain_http": True}}
    assert client.renew(new, tmp_path / "m")
    assert srv.layers[str(tmp_path / "m")].spec.registry["credential"]["secret"] == "new-s3cret"
    # Another layer's digest, or no layer at the mountpoint: nothing renewed, nothing mounted.
    assert not client.renew({**new, "layer": {**desc, "digest": "sha256:" + "0" * 64}}, tmp_path / "m")
    assert not client.renew(new, tmp_path / "elsewhere")
    assert not os.path.exists(tmp_path / "elsewhere") and len(client.list()) == 1
    assert not client.renew(s | {"registry": {"plain_http": True}}, tmp_path / "m")  # no credential: nothing to hand
    assert not any(b"s3cret" in f.read_bytes() for f in (tmp_path / "fsd").rglob("*") if f.is_file())


def test_the_reload_command_imports_only_the_client(tmp_path: Path) -> None:
    """``lazypull-fsd --reload`` (the unit's ExecReload) runs while containers read: it only
    starts the successor and waits, so it imports the client and nothing of the server (the
    server's imports cost the machine's CPU ~5 times more; docs/operations.md)."""
    probe = (
        "import sys; from lazypull.service import fsd; "
        "fsd.reload = lambda address: print(sorted(m for m in sys.modules if m.startswith('lazypull'))) or 0; "
        f"sys.exit(fsd.main(['--root', {str(tmp_path)!r}, '--reload']))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == str(
        [
            "lazypull",
            "lazypull.errors",
            "lazypull.fs",
            "lazypull.fs.fsdclient",
            "lazypull.fs.fsdwire",
            "lazypull.service",
            "lazypull.service.fsd",
        ]
    ), out.stdout + out.stderr


def test_the_layer_server_imports_nothing_of_the_daemon() -> None:
    """A successor (``--takeover``) starts while containers read: it imports the server and the
    registry stack it serves from, never the daemon's gRPC, containerd or CRI code."""
    probe = (
        "import sys; from lazypull.service import layerserver; layerserver.preload(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google') "
        "or m.startswith(('lazypull.snapshot', 'lazypull.service.main', 'lazypull.service.cri', "
        "'lazypull.service.grpc_service', 'lazypull.service.proto'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
