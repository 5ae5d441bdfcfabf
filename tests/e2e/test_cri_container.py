"""The DaemonSet's image, run rather than only written: deploy/Containerfile built with
buildah, run with podman (privileged, host paths, /dev/fuse) against a containerd on the
host, and an image pulled lazily through it.

No registry but PyPI and Debian is reachable, so the base image is the corpus's cached
debootstrap'd bookworm (tests/support/corpus.py; LAZYPULL_BASE_ROOTFS names a ready rootfs
tar) imported with podman and given to buildah with --from. Building takes minutes the first time (apt + pip inside),
so the test runs in CI (CI=true) or with LAZYPULL_TEST_CONTAINER=1 and buildah and podman exist.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.cli.main import main
from tests.support.containerd import start_containerd
from tests.support.corpus import debootstrap_tar
from tests.support.images import Entry, busybox_layer, write_image
from tests.support.net import wait_for
from tests.support.proxy import start_proxy
from tests.support.registry import start_registry

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.environ.get("LAZYPULL_TEST_CONTAINER", "1" if os.environ.get("CI") == "true" else "") != "1"
        or not (shutil.which("buildah") and shutil.which("podman")),
        reason="runs in CI or with LAZYPULL_TEST_CONTAINER=1 (needs Debian's buildah and podman; builds an image)",
    ),
]

REPO = Path(__file__).parents[2]
BASE_IMAGE = "localhost/lazypull-base:bookworm"
DATA = os.urandom(4 << 20)


def run(*cmd: str, timeout: float = 1800) -> str:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd[:4])} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def base_rootfs() -> Path:
    """A bookworm minbase tar: the one the corpus tests build and cache."""
    given = os.environ.get("LAZYPULL_BASE_ROOTFS")
    return Path(given) if given else debootstrap_tar()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE]).returncode != 0:
        run("podman", "import", "--change", "CMD=/bin/bash", str(base_rootfs()), BASE_IMAGE)
    tag = f"localhost/lazypull-test:{uuid.uuid4().hex[:12]}"
    trust: list[str] = []
    ca = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if ca:  # a host behind a TLS-inspecting proxy: pip inside the build trusts what the host trusts
        conf = tmp_path_factory.mktemp("build") / "pip.conf"
        conf.write_text("[global]\ncert = /run/build-ca.crt\n")
        trust = ["-v", f"{ca}:/run/build-ca.crt:ro", "-v", f"{conf}:/etc/pip.conf:ro"]
    run(
        "buildah", "build", "--pull=never", "--from", BASE_IMAGE, "--network", "host", "--layers", *trust,
        "-f", str(REPO / "deploy" / "Containerfile"), "-t", tag, str(REPO),
    )  # fmt: skip
    try:
        yield tag
    finally:
        subprocess.run(["podman", "rmi", "-f", tag], capture_output=True)


def test_daemonset_image_serves_a_host_containerd_lazily(image: str, tmp_path: Path) -> None:
    # Host paths the container shares, at the same paths inside (containerd mounts what the
    # daemon names); a shared mount so the layer mounts made inside appear on the host.
    node = tmp_path / "node"
    (node / "run").mkdir(parents=True)
    (node / "state").mkdir()
    run("mount", "--bind", str(node), str(node))
    run("mount", "--make-rshared", str(node))
    reg = start_registry(tmp_path / "registry")
    proxy = start_proxy(reg.url)
    name = f"lazypull-test-{uuid.uuid4().hex[:8]}"
    cd = None
    try:
        write_image(tmp_path / "src", [busybox_layer(), [Entry("data", "dir", mode=0o755), Entry("data/x", data=DATA)]])
        assert main(["copy", "--plain-http", f"oci:{tmp_path / 'src'}:latest", f"{reg.host}/c/app:orig"]) == 0
        assert main(["convert", "--plain-http", "--oci", f"{reg.host}/c/app:orig", f"{reg.host}/c/app:esgz"]) == 0
        (node / "config.toml").write_text(
            f'plain_http_hosts = ["{proxy.host}"]\nno_background_fetch = true\n[blob]\nfetching_timeout_sec = 30\n'
        )
        sock = node / "run" / "lazypull.sock"
        # podman raises rlimits by default; a host without CAP_SYS_RESOURCE (a CI container) refuses.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        ulimits = ["--ulimit", f"nofile={soft}:{hard}", "--ulimit", "nproc=4096:4096"]
        run(
            "podman", "run", "-d", "--name", name, "--privileged", "--network", "host", *ulimits,
            "--device", "/dev/fuse", "-v", f"{node}:{node}:rshared", image,
            f"--address={sock}", f"--root={node / 'state'}", f"--config={node / 'config.toml'}",
        )  # fmt: skip
        wait_for(sock.exists, 60, "the daemon's socket from the container")
        cd = start_containerd(tmp_path / "containerd", proxy_plugins={"lazypull": sock})
        ref = f"{proxy.host}/c/app:esgz"
        proxy.reset_counters()
        cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", ref, tool="ctr-remote")
        pulled = proxy.blob_bytes()
        out = tmp_path / "out"  # a file, not ctr's stdout (which a fast exit can leave empty)
        out.mkdir()
        mount = f"type=bind,src={out},dst=/out,options=rbind:rw"
        cd.ctr(
            "run",
            "--rm",
            "--snapshotter",
            "lazypull",
            "--mount",
            mount,
            ref,
            "c1",
            "/bin/sh",
            "-c",
            "md5sum /data/x > /out/sum",
        )
        assert hashlib.md5(DATA).hexdigest() in (out / "sum").read_text()
        logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True).stderr
        assert "mounted lazily" in logs, logs[-2000:]
        assert pulled < 0.05 * len(DATA)  # the pull fetched TOCs only: the layers were mounted lazily
    finally:
        if cd is not None:
            cd.stop()
        subprocess.run(["podman", "rm", "-f", "-t", "5", name], capture_output=True)
        proxy.stop()
        reg.stop()
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if line.split()[4].startswith(str(node))]
        for m in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
