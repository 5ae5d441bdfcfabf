"""The store's tree and counting, without FUSE: what a lookup by containers/storage finds,
and when a layer's mount is given back to the layer server."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from lazypull.fs.fuse.ops import ROOT_INO
from lazypull.imagefs.rootfs import MountOptions
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor
from lazypull.registry.options import RegistryOptions
from lazypull.registry.repository import RegistryStore
from lazypull.store.fs import StoreFS
from lazypull.store.info import layer_info, ref_dir
from lazypull.store.layers import StoreLayers

REF = "ho?st/x:tag"  # its base64 has a "/": two path components
LAZY = Descriptor(mt.OCI_LAYER_GZIP, "sha256:" + "1" * 64, 4096)
PLAIN = "sha256:" + "2" * 64  # in the image, but not lazy: absent from the store


class FakeServer:
    def __init__(self) -> None:
        self.mounted: list[str] = []

    def mount(self, spec: dict[str, Any], mountpoint: Path, timeout: float) -> tuple[dict[str, Any], int]:
        assert spec["layer"]["digest"] == LAZY.digest
        self.mounted.append(str(mountpoint))
        return {}, -1

    def unmount(self, mountpoint: Path) -> list[str]:
        self.mounted.remove(str(mountpoint))
        return []


@pytest.fixture
def tree(tmp_path: Path) -> tuple[StoreFS, FakeServer]:
    server = FakeServer()
    layers = StoreLayers(server, tmp_path, MountOptions(), RegistryOptions(plain_http=True))  # type: ignore[arg-type]
    store = RegistryStore.open(REF.replace("?", ""), RegistryOptions(plain_http=True))
    found = {LAZY.digest: (LAZY, layer_info(LAZY, "sha256:" + "3" * 64), store)}
    layers.lazy_layers = lambda ref: found if ref == REF else {}  # type: ignore[method-assign]
    return StoreFS(layers), server


def walk(fs: StoreFS, path: str) -> int:
    ino = ROOT_INO
    for name in path.split("/"):
        ino = fs.lookup(ino, name.encode()).ino
    return ino


def test_a_lazy_layer_is_found_where_containers_storage_looks(tree: tuple[StoreFS, FakeServer]) -> None:
    fs, server = tree
    layer = walk(fs, f"{ref_dir(REF)}/{LAZY.digest}")
    assert [n for n, _ in fs.readdir(layer)] == [b"diff", b"info", b"blob"]
    diff = walk(fs, f"{ref_dir(REF)}/{LAZY.digest}/diff")
    assert fs.readlink(diff).decode() == server.mounted[0]  # the layer server's mount of it
    info = walk(fs, f"{ref_dir(REF)}/{LAZY.digest}/info")
    assert json.loads(fs.read(info, 0, 4096))["diff-digest"] == "sha256:" + "3" * 64
    assert fs.getattr(walk(fs, f"{ref_dir(REF)}/{LAZY.digest}/blob")).size == LAZY.size
    assert len(server.mounted) == 1  # once, however often it is looked up


@pytest.mark.parametrize("path", [f"{ref_dir(REF)}/{PLAIN}", f"{ref_dir('other:tag')}/{LAZY.digest}"])
def test_other_layers_are_absent(tree: tuple[StoreFS, FakeServer], path: str) -> None:
    fs, server = tree
    with pytest.raises(OSError) as e:
        walk(fs, path)
    assert e.value.errno == errno.ENOENT and server.mounted == []


def test_the_last_release_unmounts_and_a_later_lookup_mounts_again(tree: tuple[StoreFS, FakeServer]) -> None:
    fs, server = tree
    layer = fs.layers.get(REF, LAZY.digest)
    fs.layers.use(layer)  # the lookup's
    fs.layers.use(layer)  # the graph-root layer's
    fs.layers.release(layer)  # the pull is done
    assert len(server.mounted) == 1 and fs.layers.in_use() == {LAZY.digest: 1}
    fs.layers.release(layer)  # podman rmi
    assert server.mounted == [] and fs.layers.in_use() == {}
    walk(fs, f"{ref_dir(REF)}/{LAZY.digest}/diff")
    assert len(server.mounted) == 1


def test_a_restarted_store_counts_on(tree: tuple[StoreFS, FakeServer], tmp_path: Path) -> None:
    fs, server = tree
    fs.layers.use(fs.layers.get(REF, LAZY.digest))
    again = StoreLayers(server, tmp_path, MountOptions(), RegistryOptions())  # type: ignore[arg-type]
    again.lazy_layers = fs.layers.lazy_layers  # type: ignore[method-assign]
    assert again.get(REF, LAZY.digest).uses == 1
