"""Podman through ``lazypull store`` (containers/storage's additional layer store): a
private storage.conf naming the store, ``podman run`` of an eStargz image, then ``podman rmi``
releasing the store's layers."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.fs.fsdclient import FsdClient, FsdError, socket_path
from lazypull.oci.types import Manifest
from lazypull.registry.options import RegistryOptions
from lazypull.registry.repository import RegistryStore
from tests.support.images import BUSYBOX, Entry, busybox_layer, write_image
from tests.support.proxy import Proxy, start_proxy
from tests.support.registry import Registry, start_registry

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("podman") is None, reason="needs podman"),
]

# podman raises rlimits by default; a host without CAP_SYS_RESOURCE (a CI container) refuses.
_SOFT, _HARD = resource.getrlimit(resource.RLIMIT_NOFILE)
ULIMITS = ["--ulimit", f"nofile={_SOFT}:{_HARD}", "--ulimit", "nproc=4096:4096", "--network", "none"]
USER, PASSWORD = "alice", "store-secret"
BIG = os.urandom(8 << 20)  # never read by the container: must not be fetched


@dataclass
class World:
    registry: Registry
    proxy: Proxy
    root: Path
    ref: str  # the eStargz image, through the counting proxy
    image_bytes: int
    store: subprocess.Popen[bytes]
    env: dict[str, str]

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"podman {args[0]} failed: {res.stderr}\n-- store log --\n{self.store_log()}")
        return res

    def store_log(self) -> str:
        return (self.root / "store.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    private = bool(getattr(request, "param", False))  # the registry wants a password
    reg = start_registry(tmp_path / "registry", users={USER: PASSWORD} if private else None)
    proxy = start_proxy(reg.url)
    user = ["--user", f"{USER}:{PASSWORD}"] if private else []
    app = [Entry("app", "dir", mode=0o755), Entry("app/hello", data=b"hello from the store\n")]
    app.append(Entry("app/big", data=BIG))
    write_image(tmp_path / "src", [busybox_layer(), app], cmd=["/bin/cat", "/app/hello"])
    plain = f"{reg.host}/podman/img:orig"
    assert main(["copy", "--plain-http", *user, f"oci:{tmp_path / 'src'}:latest", plain]) == 0
    assert main(["convert", "--plain-http", *user, "--oci", plain, f"{reg.host}/podman/img:esgz"]) == 0
    ropts = RegistryOptions(plain_http=True, user=f"{USER}:{PASSWORD}" if private else None)
    esgz = RegistryStore.open(f"{reg.host}/podman/img:esgz", ropts)
    desc = esgz.resolve()
    image_bytes = sum(x.size for x in Manifest.parse(esgz.fetch(desc), desc.media_type).layers)
    store_dir = tmp_path / "store"
    conf = tmp_path / "storage.conf"
    conf.write_text(
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{tmp_path / "graph"}"\n'
        f'runroot = "{tmp_path / "run"}"\n'
        "[storage.options]\n"
        f'additionallayerstores = ["{store_dir}:ref"]\n'
    )
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}
    if private:  # podman and the store both read it
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        (tmp_path / "auth.json").write_text(json.dumps({"auths": {proxy.host: {"auth": token}}}))
        env["REGISTRY_AUTH_FILE"] = str(tmp_path / "auth.json")
    log = open(tmp_path / "store.log", "wb")  # noqa: SIM115
    cmd = [sys.executable, "-m", "lazypull.cli.main", "--log-level", "info", "store", "--plain-http"]
    cmd += ["--no-background-fetch", "--state-dir", str(tmp_path / "state"), "--fsd-root", str(tmp_path / "fsd")]
    cmd += ["--cache-dir", str(tmp_path / "cache"), str(store_dir)]
    store = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    w = World(reg, proxy, tmp_path, f"{proxy.host}/podman/img:esgz", image_bytes, store, env)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "store.log").read_bytes().startswith(b"serving"):
            assert store.poll() is None and time.monotonic() < deadline, w.store_log()
            time.sleep(0.05)
        yield w
    finally:
        subprocess.run(["podman", "rm", "-af"], env=env, capture_output=True, timeout=60)
        subprocess.run(["podman", "rmi", "-af"], env=env, capture_output=True, timeout=60)
        store.terminate()
        store.wait(30)
        log.close()
        try:  # the store leaves its layers to the layer server it started: stop that too
            FsdClient(socket_path(tmp_path / "fsd")).shutdown(unmount_all=True)
        except FsdError:
            pass
        subprocess.run(["podman", "system", "reset", "-f"], env=env, capture_output=True, timeout=60)
        for m in _mounts_under(tmp_path):
            subprocess.run(["umount", "-l", m], capture_output=True)
        proxy.stop()
        reg.stop()


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        mps = [line.split()[4] for line in f]
    return sorted((m for m in mps if m.startswith(str(root))), key=len, reverse=True)


def test_podman_runs_an_estargz_image_through_the_store(world: World) -> None:
    world.proxy.reset_counters()
    out = world.podman("run", "--rm", "--tls-verify=false", *ULIMITS, world.ref).stdout
    assert out == "hello from the store\n"
    fetched = world.proxy.blob_bytes()
    assert fetched < world.image_bytes / 4, (fetched, world.image_bytes)
    # The layers are the store's: the graph root's diff is a link into it.
    layers = list((world.root / "graph" / "overlay").glob("*/diff"))
    assert any(d.is_symlink() and str(world.root / "store") in os.readlink(d) for d in layers)
    ref_dir = base64.standard_b64encode(world.ref.encode()).decode()
    assert any(ref_dir in os.readlink(d) for d in layers)  # STORE/<base64(ref)>/<digest>/diff
    assert len(_mounts_under(world.root / "state")) == 2  # both layers: the layer server's mounts
    print(f"podman run through the store: {fetched} of {world.image_bytes} image bytes fetched")
    # Every file as the image has it (the unread 8 MiB file too, now fetched).
    sums = world.podman("run", "--rm", *ULIMITS, world.ref, "md5sum", "/app/hello", "/app/big", "/bin/busybox").stdout
    want = [b"hello from the store\n", BIG, Path(BUSYBOX).read_bytes()]
    assert [line.split()[0] for line in sums.splitlines()] == [hashlib.md5(x).hexdigest() for x in want]
    blob = next(d for d in layers if d.is_symlink()).readlink().parent / "blob"  # the compressed layer
    assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == blob.parent.name
    world.podman("rmi", world.ref)  # the last release of each layer unmounts it
    assert _mounts_under(world.root / "state") == [], world.store_log()


def test_layers_without_an_index_are_left_to_podman(world: World) -> None:
    plain = world.ref.replace(":esgz", ":orig")  # plain gzip, no SOCI index
    out = world.podman("run", "--rm", "--tls-verify=false", *ULIMITS, plain).stdout
    assert out == "hello from the store\n"
    assert _mounts_under(world.root / "state") == []
    assert not any(d.is_symlink() for d in (world.root / "graph" / "overlay").glob("*/diff"))


@pytest.mark.parametrize("world", [True], indirect=True, ids=["private"])
def test_a_private_image_with_the_containers_auth_file(world: World) -> None:
    world.proxy.reset_counters()
    out = world.podman("run", "--rm", "--tls-verify=false", *ULIMITS, world.ref).stdout
    assert out == "hello from the store\n"
    assert len(_mounts_under(world.root / "state")) == 2  # the store read the image with that file
    assert world.proxy.blob_bytes() < world.image_bytes / 4


def test_a_soci_enabled_image_runs_lazily_through_the_store(world: World) -> None:
    # gzip layers as they are, with a SOCI index manifest v2 packed beside the image: the store
    # serves them through their zTOCs (the same lookup as the snapshotter's).
    plain = world.ref.replace(":esgz", ":orig").replace(world.proxy.host, world.registry.host)
    soci = f"{world.registry.host}/podman/img:soci"
    args = ["soci", "convert", "--plain-http", "--span-size", str(1 << 20), "--min-layer-size", "0", plain, soci]
    assert main(args) == 0
    world.proxy.reset_counters()
    ref = world.ref.replace(":esgz", ":soci")
    out = world.podman("run", "--rm", "--tls-verify=false", *ULIMITS, ref).stdout
    assert out == "hello from the store\n"
    assert len(_mounts_under(world.root / "state")) == 2, world.store_log()  # both layers, lazily
    # gzip is read in 1 MiB spans: the spans around /app/hello and busybox's, not the big file
    assert world.proxy.blob_bytes() < world.image_bytes - len(BIG) / 2, (world.proxy.blob_bytes(), world.image_bytes)
    world.podman("rmi", ref)
    assert _mounts_under(world.root / "state") == [], world.store_log()
