"""The daemon's side of the layer server: when layers get mounted and which mount a release
takes away (a real in-process server, real FUSE mounts)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from lazypull.fs.fuse.server import unmount
from lazypull.service.fsd import LayerServer
from lazypull.service.fsdclient import FsdClient
from lazypull.snapshot.layers import RemoteLayers
from lazypull.snapshot.lifecycle import State
from tests.service.test_fsd import make_layer, server, spec

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
