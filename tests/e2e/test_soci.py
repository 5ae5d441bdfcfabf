"""SOCI end to end: indexes beside an unconverted image in a real registry (no referrers
API: the referrers tag schema), lazy mounts through `lazypull mount` and containerd."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.format.soci import open_soci
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Manifest
from lazypull.registry.options import RegistryOptions
from lazypull.registry.reference import Reference
from lazypull.registry.referrers import tag_for
from lazypull.registry.repository import RegistryStore
from lazypull.soci.create import image_manifest
from lazypull.soci.find import soci_ztocs
from lazypull.soci.index import SociIndex
from tests.e2e.interop import snapshot_tree
from tests.e2e.test_snapshotter import md5
from tests.support.images import Entry, busybox_layer, write_image
from tests.support.net import free_port
from tests.support.node import lazy_node
from tests.support.proxy import Proxy, start_proxy
from tests.support.registry import Registry, start_registry

pytestmark = pytest.mark.e2e

rng = random.Random(11)
BIG = rng.randbytes(6 << 20)  # incompressible: spans ~ file bytes
SMALL = [rng.randbytes(3000) for _ in range(200)]
TAIL = rng.randbytes(2 << 20)
SPAN = 1 << 20


def data_layer() -> list[Entry]:
    return [
        Entry("data", "dir", mode=0o755),
        Entry("data/big.bin", data=BIG, mode=0o640, uid=1000, gid=1000),
        Entry("data/hello.txt", data=b"hello from a SOCI layer\n", xattrs={"user.note": "kept"}),
        Entry("data/hard", "hardlink", link="data/hello.txt"),
        Entry("data/sym", "symlink", link="hello.txt"),
        Entry("data/gone", data=b"removed above"),
        *[Entry(f"data/small/{i}", data=d) for i, d in enumerate(SMALL)],
        Entry("data/tail.bin", data=TAIL),
    ]


@dataclass
class World:
    registry: Registry
    proxy: Proxy
    root: Path
    plain: str  # unconverted gzip image, direct
    via_proxy: str  # the same through the counting proxy


def opts() -> RegistryOptions:
    return RegistryOptions(plain_http=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("soci")
    reg = start_registry(root / "registry")
    proxy = start_proxy(reg.url)
    try:
        write_image(
            root / "src",
            [busybox_layer(), data_layer(), [Entry("data/.wh.gone"), Entry("data/top.txt", data=b"top\n")]],
        )
        plain = f"{reg.host}/soci/img:v1"
        assert main(["copy", "--plain-http", f"oci:{root / 'src'}:latest", plain]) == 0
        yield World(reg, proxy, root, plain, f"{proxy.host}/soci/img:v1")
    finally:
        with open("/proc/self/mountinfo") as f:
            for m in [line.split()[4] for line in f if str(root) in line.split()[4]]:
                subprocess.run(["umount", "-l", m], capture_output=True)
        proxy.stop()
        reg.stop()


@pytest.fixture(scope="module")
def indexed(world: World) -> str:
    """The image with a SOCI index (zTOC for the 8 MB layer only); returns the index digest."""
    store = RegistryStore.open(world.plain, opts())
    before = store.resolve()
    assert (
        main(["soci", "create", "--plain-http", "--span-size", str(SPAN), "--min-layer-size", "4000000", world.plain])
        == 0
    )
    after = RegistryStore.open(world.plain, opts()).resolve()
    assert after == before  # the image's digest never changes
    _subject, found = image_manifest_and_indexes(world.plain)
    assert len(found) == 1
    return found[0]


def image_manifest_and_indexes(ref: str) -> tuple[str, list[str]]:
    from lazypull.soci.create import list_indexes

    subject, found = list_indexes(RegistryStore.open(ref, opts()))
    return subject.digest, [d.digest for d in found]


def test_index_shape_and_referrers_tag(world: World, indexed: str) -> None:
    store = RegistryStore.open(world.plain, opts())
    subject, manifest = image_manifest(store)
    client = store.client
    data, _mt, _dg = client.get_manifest(store.ref.with_digest(indexed))
    obj = json.loads(data)
    assert obj["mediaType"] == mt.OCI_MANIFEST and obj["config"]["mediaType"] == mt.SOCI_INDEX_ARTIFACT_TYPE
    assert obj["config"]["size"] == 2 and obj["subject"]["digest"] == subject.digest
    index = SociIndex.parse(data)
    assert len(index.ztocs) == 1  # busybox and the whiteout layer are under the minimum size
    z = index.ztocs[0]
    assert z.media_type == "application/octet-stream"
    assert z.annotations[mt.ANNOTATION_SOCI_LAYER_DIGEST] == manifest.layers[1].digest
    assert z.annotations[mt.ANNOTATION_SOCI_LAYER_MEDIA_TYPE] == manifest.layers[1].media_type
    # registry 2.8 has no referrers API: the index is listed under the sha256-<hex> tag
    tag_doc, tag_mt, _ = client.get_manifest(
        Reference(store.ref.registry, store.ref.repository, tag_for(subject.digest))
    )
    listed = json.loads(tag_doc)["manifests"]
    assert tag_mt == mt.OCI_INDEX and [d["digest"] for d in listed] == [indexed]
    assert listed[0]["artifactType"] == mt.SOCI_INDEX_ARTIFACT_TYPE
    ztoc = store.fetch(z)
    idx = open_soci(ztoc, manifest.layers[1].size)
    assert idx.lookup("data/big.bin") is not None and len(idx.spans) > 6


def test_list_rm_and_the_image_stays_untouched(world: World, tmp_path: Path) -> None:
    ref = f"{world.registry.host}/soci/other:v1"
    write_image(tmp_path / "src", [data_layer()])
    assert main(["copy", "--plain-http", f"oci:{tmp_path / 'src'}:latest", ref]) == 0
    before = RegistryStore.open(ref, opts()).resolve()
    for _ in range(2):
        assert main(["soci", "create", "--plain-http", "--min-layer-size", "0", ref]) == 0
    subject, found = image_manifest_and_indexes(ref)
    assert len(found) == 1  # the same index again is listed once (deterministic bytes)
    assert main(["soci", "create", "--plain-http", "--span-size", "65536", "--min-layer-size", "0", ref]) == 0
    _, found = image_manifest_and_indexes(ref)
    assert len(found) == 2
    assert main(["soci", "rm", "--plain-http", "--digest", found[0], ref]) == 0
    assert image_manifest_and_indexes(ref)[1] == [found[1]]
    assert main(["soci", "rm", "--plain-http", ref]) == 0
    assert image_manifest_and_indexes(ref)[1] == []
    assert main(["soci", "rm", "--plain-http", "--digest", found[0], ref]) == 1  # clear error, not found
    assert RegistryStore.open(ref, opts()).resolve() == before and subject == before.digest


def test_lazy_mount_of_the_unconverted_image(world: World, indexed: str, tmp_path: Path) -> None:
    assert main(["unpack", "--plain-http", world.plain, str(tmp_path / "truth")]) == 0
    mnt = tmp_path / "mnt"
    state = tmp_path / "state"
    world.proxy.reset_counters()
    args = ["mount", "--daemon", "--plain-http", "--no-background-fetch", "--no-prefetch"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--state-dir", str(state), world.via_proxy, str(mnt)]
    assert main(args) == 0
    try:
        store = RegistryStore.open(world.plain, opts())
        _s, manifest = image_manifest(store)
        small_layers = manifest.layers[0].size + manifest.layers[2].size
        after_mount = world.proxy.blob_bytes()
        # the two small layers whole, the zTOC; nothing of the indexed layer's data
        assert after_mount < small_layers + 400_000, after_mount
        world.proxy.reset_counters()
        assert (mnt / "data/hello.txt").read_bytes() == b"hello from a SOCI layer\n"
        one_span = world.proxy.blob_bytes()
        assert 0 < one_span <= SPAN * 1.2 + 65536, one_span  # one span, not the 8 MB layer
        world.proxy.reset_counters()
        assert hashlib.sha256((mnt / "data/big.bin").read_bytes()).digest() == hashlib.sha256(BIG).digest()
        assert world.proxy.blob_bytes() <= len(BIG) * 1.1 + 2 * SPAN
        assert snapshot_tree(mnt) == snapshot_tree(tmp_path / "truth")
        assert not (mnt / "data/gone").exists() and (mnt / "data/top.txt").read_bytes() == b"top\n"
        assert os.stat(mnt / "data/hard").st_ino == os.stat(mnt / "data/hello.txt").st_ino
        assert os.getxattr(mnt / "data/hello.txt", "user.note") == b"kept"
        world.proxy.reset_counters()
        (mnt / "data/big.bin").read_bytes()
        assert world.proxy.blob_bytes() == 0  # verified spans are cached
    finally:
        assert main(["umount", "--state-dir", str(state), str(mnt)]) == 0


def test_tampered_span_gives_eio_for_its_files_only(world: World, indexed: str, tmp_path: Path) -> None:
    ref = f"{world.registry.host}/soci/tamper:v1"
    # a layer of its own: blobs are shared by digest across the registry's repositories
    write_image(tmp_path / "src", [[*data_layer(), Entry("data/tampered-copy", data=b"x")]])
    assert main(["copy", "--plain-http", f"oci:{tmp_path / 'src'}:latest", ref]) == 0
    args = ["soci", "create", "--plain-http", "--span-size", str(SPAN), "--min-layer-size", "0", ref]
    assert main(args) == 0
    store = RegistryStore.open(ref, opts())
    _s, manifest = image_manifest(store)
    layer = manifest.layers[0]
    z = soci_ztocs(store.client, store.ref, _s.digest)[layer.digest]
    idx = open_soci(store.fetch(z), layer.size)
    tail = idx.lookup("data/tail.bin")
    assert tail is not None
    path = world.registry.blob_data_path(layer.digest)
    data = bytearray(path.read_bytes())
    data[tail.chunks[-1].blob_end - 100] ^= 0xFF
    path.write_bytes(bytes(data))
    mnt = tmp_path / "mnt"
    state = tmp_path / "state"
    args = ["mount", "--daemon", "--plain-http", "--no-background-fetch", "--no-prefetch", "--fetch-timeout", "5"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--state-dir", str(state), ref, str(mnt)]
    assert main(args) == 0
    try:
        with pytest.raises(OSError) as ei:
            (mnt / "data/tail.bin").read_bytes()
        assert ei.value.errno == errno.EIO
        assert (mnt / "data/hello.txt").read_bytes() == b"hello from a SOCI layer\n"
        assert hashlib.sha256((mnt / "data/big.bin").read_bytes()).digest() == hashlib.sha256(BIG).digest()
    finally:
        assert main(["umount", "--state-dir", str(state), str(mnt)]) == 0


def test_containerd_rpull_mounts_the_gzip_layers_lazily(world: World, tmp_path: Path) -> None:
    """Every layer indexed (--min-layer-size 0): containerd fetches no layer blob itself.

    (With a layer left unindexed, containerd's unpacker fetches that layer and, in
    parallel, every layer above it: the lazy mounts still work but the blobs are pulled.)"""
    ref = f"{world.registry.host}/soci/all:v1"
    assert main(["copy", "--plain-http", f"oci:{world.root / 'src'}:latest", ref]) == 0
    assert main(["soci", "create", "--plain-http", "--span-size", str(SPAN), "--min-layer-size", "0", ref]) == 0
    lazy_ref = f"{world.proxy.host}/soci/all:v1"
    port = free_port()
    cfg = (
        f'plain_http_hosts = ["{world.proxy.host}", "{world.registry.host}"]\n'
        f'no_background_fetch = true\nmetrics_address = "127.0.0.1:{port}"\n'
        f"prefetch_timeout_sec = 5\n[blob]\nfetching_timeout_sec = 10\nmax_retries = 2\n"
    )
    with lazy_node(tmp_path, cfg) as (daemon, cd):
        world.proxy.reset_counters()
        cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", lazy_ref, tool="ctr-remote")
        assert len(daemon.layers()) == 3  # every layer served lazily by the layer server
        whole = [(p, st) for m, p, st, _n in world.proxy.log if "/blobs/" in p and m == "GET" and st == 200]
        out = cd.ctr(
            "run", "--rm", "--snapshotter", "lazypull", lazy_ref, "soci1",
            "/bin/sh", "-c", "cat /data/hello.txt; md5sum /data/tail.bin; ls /data/gone || true",
        ).stdout  # fmt: skip
        assert "hello from a SOCI layer" in out and md5(TAIL) in out
        store = RegistryStore.open(ref, opts())
        layers = Manifest.parse(store.fetch(store.resolve()), None).layers
        fetched = world.proxy.blob_bytes()
        # config, zTOCs and the spans read (busybox's, hello's, tail's): not big.bin
        assert fetched < sum(x.size for x in layers) - len(BIG) // 2, fetched
        assert all(not p.endswith(x.digest) for p, _ in whole for x in layers), whole


def test_containerd_pulls_a_converted_v2_image_lazily(world: World, tmp_path: Path) -> None:
    """``soci convert``: a SOCI-enabled image (index manifest v2) with the source's layers,
    which the snapshotter finds through the manifest's annotation alone (no v1 referrer)."""
    dst = f"{world.registry.host}/soci/v2:soci"
    args = ["soci", "convert", "--plain-http", "--span-size", str(SPAN), "--min-layer-size", "0", world.plain, dst]
    assert main(args) == 0
    src_layers = image_manifest(RegistryStore.open(world.plain, opts()))[1].layers
    _dst, dst_manifest = image_manifest(RegistryStore.open(dst, opts()))
    assert [x.digest for x in dst_manifest.layers] == [x.digest for x in src_layers]
    assert mt.ANNOTATION_SOCI_INDEX_DIGEST in dst_manifest.annotations
    assert image_manifest_and_indexes(dst)[1] == []
    lazy_ref = f"{world.proxy.host}/soci/v2:soci"
    mnt, state = tmp_path / "mnt", tmp_path / "state"
    args = ["mount", "--daemon", "--plain-http", "--no-background-fetch", "--no-prefetch"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--state-dir", str(state), lazy_ref, str(mnt)]
    world.proxy.reset_counters()
    assert main(args) == 0
    try:
        assert (mnt / "data/hello.txt").read_bytes() == b"hello from a SOCI layer\n"
        small_layers = src_layers[0].size + src_layers[2].size
        assert world.proxy.blob_bytes() < small_layers + SPAN * 1.2 + 400_000  # not the 8 MB layer
    finally:
        assert main(["umount", "--state-dir", str(state), str(mnt)]) == 0
    cfg = f'plain_http_hosts = ["{world.proxy.host}", "{world.registry.host}"]\nno_background_fetch = true\n'
    with lazy_node(tmp_path, cfg) as (daemon, cd):
        world.proxy.reset_counters()
        cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", lazy_ref, tool="ctr-remote")
        assert len(daemon.layers()) == 3  # every layer served lazily
        out = cd.ctr(
            "run", "--rm", "--snapshotter", "lazypull", lazy_ref, "sociv2",
            "/bin/sh", "-c", "cat /data/hello.txt; md5sum /data/tail.bin",
        ).stdout  # fmt: skip
        assert "hello from a SOCI layer" in out and md5(TAIL) in out
        whole = [p for m, p, st, _n in world.proxy.log if "/blobs/" in p and m == "GET" and st == 200]
        assert all(not p.endswith(x.digest) for p in whole for x in src_layers), whole
        fetched = world.proxy.blob_bytes()
        assert fetched < sum(x.size for x in src_layers) - len(BIG) // 2, fetched
