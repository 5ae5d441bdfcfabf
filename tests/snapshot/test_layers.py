"""The daemon's side of the layer server: when layers get mounted and which mount a release
takes away (a real in-process server, real FUSE mounts)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from lazypull.fs.fsdclient import FsdClient
from lazypull.fs.fuse import protocol
from lazypull.fs.fuse.server import FuseSession, unmount
from lazypull.service.layerserver import LayerServer
from lazypull.snapshot.layers import RemoteLayers
from lazypull.snapshot.lifecycle import State
from tests.service.test_fsd import make_layer, server, spec
from tests.support.net import wait_for

__all__ = ["server"]  # the fixture


def _layers(tmp_path: Path, client: FsdClient, used: set[str] | None = None) -> RemoteLayers:
    layers = RemoteLayers(tmp_path / "daemon", client.address, in_use=lambda d: d in (used or set()))
    layers.ensure_server()
    return layers


def test_a_layer_asked_for_does_not_wait_behind_the_mount_ahead_queue(
    server: tuple[LayerServer, FsdClient], tmp_path: Path
) -> None:
    srv, client = server
    layers = _layers(tmp_path, client)
    blob, desc = make_layer(tmp_path, "a", {"hello.txt": b"hello\n"})
    digest = str(desc["digest"])
    busy = threading.Event()
    try:
        for _ in range(4):  # every mount-ahead worker busy (other images' layers, a slow registry)
            layers._ahead.submit(busy.wait, 30)
        mp = tmp_path / "layers" / "a" / "fs"
        queued = layers.lease(digest, mp, spec(tmp_path, blob, desc), ahead=True)
        assert layers.lifecycle.get(digest).state == State.MOUNTING  # type: ignore[union-attr]
        asked = layers.lease(digest, mp, spec(tmp_path, blob, desc))  # its Prepare
        asked.wait(10)
        assert (mp / "hello.txt").read_bytes() == b"hello\n" and str(mp) in srv.layers
    finally:
        busy.set()
    layers._ahead.shutdown(wait=True)  # the queued mount-ahead runs now and finds it mounted
    assert len(srv.layers) == 1
    asked.release()
    assert len(srv.layers) == 1  # the ahead lease still holds it
    queued.release()
    assert srv.layers == {} and not mp.parent.exists()  # nobody holds it: unmounted, its directory gone


def test_a_stale_release_never_unmounts_a_newer_mount(server: tuple[LayerServer, FsdClient], tmp_path: Path) -> None:
    """The release of mount 1 comes after mount 2 of the same layer is at the same path."""
    srv, client = server
    layers = _layers(tmp_path, client)
    blob, desc = make_layer(tmp_path, "a", {"hello.txt": b"hello\n"})
    digest = str(desc["digest"])
    mp = tmp_path / "layers" / "a" / "fs"
    with layers.lease(digest, mp, spec(tmp_path, blob, desc)) as lease:
        first = lease.wait(10)
    assert srv.layers == {}
    with layers.lease(digest, mp, spec(tmp_path, blob, desc)) as lease:
        second = lease.wait(10)
        assert second.mount_id != first.mount_id and second.dev != ""
        # The server refuses to unmount by a stale id, and a stale hold unmounts nothing.
        assert client.unmount(mp, mount_id=first.mount_id) == []
        assert first.root.unmount() is False
        assert (mp / "hello.txt").read_bytes() == b"hello\n" and second.root.shown()
        assert layers.lifecycle.mounter.live(second)


def test_a_layer_whose_path_shows_the_empty_directory_is_mounted_again(
    server: tuple[LayerServer, FsdClient], tmp_path: Path
) -> None:
    """Something unmounted the layer under us: a container must never get the empty directory."""
    srv, client = server
    blob, desc = make_layer(tmp_path, "a", {"hello.txt": b"hello\n"})
    digest = str(desc["digest"])
    layers = _layers(tmp_path, client, used={digest})
    mp = tmp_path / "layers" / "a" / "fs"
    with layers.lease(digest, mp, spec(tmp_path, blob, desc)) as lease:
        first = lease.wait(10)
    unmount(str(mp))  # by path, from outside
    assert not (mp / "hello.txt").exists() and not layers.lifecycle.mounter.live(first)
    with layers.lease(digest, mp, lambda: spec(tmp_path, blob, desc)) as lease:
        again = lease.wait_live(10)
    assert again is not first and (mp / "hello.txt").read_bytes() == b"hello\n"
    assert layers.lifecycle.repairs == 1 and len(srv.layers) == 1
    assert os.path.ismount(mp)


def _stuck_statfs(srv: LayerServer, mp: Path, release: threading.Event) -> None:
    """The layer's STATFS requests hang in the server (its requests are stuck)."""
    session = srv.layers[str(mp)].session
    assert session is not None

    def stuck(self: FuseSession, nodeid: int, body: memoryview) -> bytes | None:
        release.wait(30)
        return FuseSession._handlers[protocol.STATFS](self, nodeid, body)

    session._handlers = {**FuseSession._handlers, protocol.STATFS: stuck}  # this session's only


def _two_layers(tmp_path: Path, client: FsdClient) -> tuple[RemoteLayers, list[Path]]:
    mps, digests = [], []
    for name in ("a", "b"):
        blob, desc = make_layer(tmp_path, name, {f"{name}.txt": name.encode()})
        digests.append(str(desc["digest"]))
        mps.append((tmp_path / "layers" / name / "fs", blob, desc))
    layers = RemoteLayers(
        tmp_path / "daemon", client.address, in_use=lambda d: d in digests, health_interval=0.1, wedge_timeout=1.0
    )
    layers.ensure_server()
    for digest, (mp, blob, desc) in zip(digests, mps, strict=True):
        with layers.lease(digest, mp, spec(tmp_path, blob, desc)) as lease:
            lease.wait(10)
    return layers, [mp for mp, _, _ in mps]


def test_only_the_layer_whose_requests_are_stuck_is_aborted(
    server: tuple[LayerServer, FsdClient], tmp_path: Path
) -> None:
    srv, client = server
    layers, (a, b) = _two_layers(tmp_path, client)
    release = threading.Event()
    _stuck_statfs(srv, a, release)
    try:
        layers.run_health()
        wait_for(lambda: layers.aborted, 20, "the stuck layer to be aborted")
        assert layers.aborted == 1  # a: stuck while b was answered
        wait_for((a / "a.txt").exists, 20, "the aborted layer to be mounted again")
        assert (a / "a.txt").read_bytes() == b"a" and (b / "b.txt").read_bytes() == b"b"  # a mounted again
        assert dict(layers.health()) and all(h for _, h in layers.health())
    finally:
        release.set()
        layers.close()


def test_a_server_too_busy_to_answer_anyone_has_no_wedged_layer(
    server: tuple[LayerServer, FsdClient], tmp_path: Path
) -> None:
    """Every layer's requests wait (a busy server): nobody's connection is aborted."""
    srv, client = server
    layers, (a, b) = _two_layers(tmp_path, client)
    release = threading.Event()
    _stuck_statfs(srv, a, release)
    _stuck_statfs(srv, b, release)
    try:
        layers.run_health()
        time.sleep(3.0)  # three wedge timeouts
        assert layers.aborted == 0 and layers.lifecycle.repairs == 0
    finally:
        release.set()
        layers.close()
    wait_for(lambda: layers.last_answer, 10, "a probe answered once the server is free")
    assert (a / "a.txt").read_bytes() == b"a" and (b / "b.txt").read_bytes() == b"b"
