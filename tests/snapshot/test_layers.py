"""The daemon's side of the layer server: when layers get mounted (a real in-process server)."""

from __future__ import annotations

import threading
from pathlib import Path

from lazypull.service.fsd import LayerServer
from lazypull.service.fsdclient import FsdClient
from lazypull.snapshot.layers import RemoteLayers
from tests.service.test_fsd import make_layer, server, spec

__all__ = ["server"]  # the fixture


def test_a_layer_asked_for_does_not_wait_behind_the_mount_ahead_queue(
    server: tuple[LayerServer, FsdClient], tmp_path: Path
) -> None:
    srv, client = server
    layers = RemoteLayers(tmp_path / "daemon", client.address)
    layers.ensure_server()
    blob, desc = make_layer(tmp_path, "a", {"hello.txt": b"hello\n"})
    busy = threading.Event()
    try:
        for _ in range(4):  # every mount-ahead worker busy (other images' layers, a slow registry)
            layers._ahead.submit(busy.wait, 30)
        mp = tmp_path / "mnt"
        queued = layers.start(str(desc["digest"]), mp, spec(tmp_path, blob, desc), ahead=True)
        assert not queued.ready.wait(0.3)  # still in the queue
        asked = layers.start(str(desc["digest"]), mp, spec(tmp_path, blob, desc))  # its Prepare
        assert asked is queued
        asked.wait(10)
        assert (mp / "hello.txt").read_bytes() == b"hello\n" and str(mp) in srv.layers
    finally:
        busy.set()
    layers._ahead.shutdown(wait=True)  # the queued mount-ahead runs now and finds it mounted
    assert asked.fd >= 0 and len(srv.layers) == 1
    layers.stop(str(desc["digest"]), free_cache=True)
