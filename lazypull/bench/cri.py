"""The benchmark's ``cri`` mode: start the image as a Kubernetes pod, the kubelet's way.

The node is containerd with its CRI plugin (snapshotter ``lazypull``) and the lazypull
daemon serving the CRI image service (``[cri_keychain]``). Each run calls PullImage on
the daemon's socket with credentials, RunPodSandbox (host network, a pause image built
here from static busybox), CreateContainer and StartContainer on containerd's, and waits
for the workload's output in the container's CRI log. The eStargz image is served by a
second registry process on the same storage that requires htpasswd auth, so the run
only works if the kubelet's credentials reach the lazy mounts.

pull = PullImage; create = RunPodSandbox + CreateContainer; run = StartContainer until
the output appears.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lazypull.bench.cleanup import remove_node, stop_processes
from lazypull.bench.images import BenchImage, _gzip_layer, _tar_dir
from lazypull.bench.learned import NO_PROFILES
from lazypull.bench.netns import ShapedNet
from lazypull.convert.copy import copy_image
from lazypull.errors import LazypullError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.layout import OCILayout
from lazypull.oci.types import Descriptor, Manifest, host_platform
from lazypull.polling import wait_for
from lazypull.registry.options import RegistryOptions
from lazypull.registry.stores import open_store
from lazypull.service.cri.kubelet import Kubelet, Pod

AUTH_PORT = 5001
USER = "bench"


def build_pause(work: Path) -> OCILayout:
    """A pause image: static busybox sleeping forever (cached)."""
    out = work / "pause"
    if (out / "index.json").exists():
        return OCILayout(out, "latest")
    busybox = shutil.which("busybox")
    if not busybox:
        raise LazypullError("mode 'cri' builds its pause image from busybox (Debian: busybox-static)")
    root = work / "pause-root"
    shutil.rmtree(root, ignore_errors=True)
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    (root / "bin" / "sleep").symlink_to("busybox")
    tar = work / "pause.tar"
    _tar_dir(root, tar)
    shutil.rmtree(root)
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    layout = OCILayout(tmp, create=True)
    d, diff = _gzip_layer(tar, layout)
    plat = host_platform()
    cfg = json.dumps(
        {
            "architecture": plat.architecture,
            "os": "linux",
            "config": {"Entrypoint": ["/bin/sleep", "2147483647"]},
            "rootfs": {"type": "layers", "diff_ids": [diff]},
        }
    ).encode()
    cd = Descriptor(mt.OCI_CONFIG, digestlib.of_bytes(cfg), len(cfg))
    layout.push_bytes(cd, cfg)
    m = Manifest(cd, [d]).to_bytes()
    layout.push_manifest(Descriptor(mt.OCI_MANIFEST, digestlib.of_bytes(m), len(m), platform=plat), m, tag="latest")
    tar.unlink()
    tmp.rename(out)
    return OCILayout(out, "latest")


class AuthRegistry:
    """A second docker-registry on the benchmark registry's storage, requiring htpasswd auth."""

    def __init__(self, net: ShapedNet, storage_root: Path, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.password = secrets.token_urlsafe(16)
        out = subprocess.run(["htpasswd", "-Bbn", USER, self.password], capture_output=True, text=True, check=True)
        (root / "htpasswd").write_text(out.stdout)
        cfg = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(storage_root / "storage")}},
            "http": {"addr": f"{net.registry_ip}:{AUTH_PORT}", "secret": secrets.token_hex(16)},
            "auth": {"htpasswd": {"realm": "bench", "path": str(root / "htpasswd")}},
        }
        (root / "config.yml").write_text(json.dumps(cfg))
        self.host = f"{net.registry_ip}:{AUTH_PORT}"
        self.proc = subprocess.Popen(
            [*net.exec_prefix(), "docker-registry", "serve", str(root / "config.yml")],
            stdout=subprocess.DEVNULL,
            stderr=open(root / "registry.log", "wb"),  # noqa: SIM115 - the child owns it
        )
        self.log = root / "registry.log"

        def answers() -> bool:
            import urllib.error
            import urllib.request

            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
            except urllib.error.HTTPError as e:
                return e.code == 401
            except OSError:
                return False
            return False

        try:
            wait_for(answers, 20, "the benchmark's htpasswd registry")
        except LazypullError:
            self.stop()
            raise LazypullError(f"the htpasswd registry did not start: {self.log.read_text()[-600:]}") from None

    @property
    def user(self) -> str:
        return f"{USER}:{self.password}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class CriNode:
    """containerd with CRI (snapshotter lazypull) and the daemon serving the image service."""

    def __init__(self, root: Path, hosts: list[str], pause: str, background_fetch: bool) -> None:
        self.root = root
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        self.address = root / "containerd.sock"
        self.image_endpoint = root / "lazypull.sock"
        (root / "lazypull.toml").write_text(
            f"plain_http_hosts = {json.dumps(hosts)}\n"
            f'docker_config = "{root / "none.json"}"\n'  # credentials come from PullImage only
            f"no_background_fetch = {str(not background_fetch).lower()}\n"
            + NO_PROFILES
            + f'[cri_keychain]\nenable_keychain = true\nimage_service_path = "{self.address}"\n'
        )
        self.daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lazypull.service.main",
                *("--address", str(self.image_endpoint), "--root", str(root / "lazypull")),
                *("--config", str(root / "lazypull.toml")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(root / "lazypull.log", "wb"),  # noqa: SIM115 - the child owns it
        )
        wait_for(self.image_endpoint.exists, 30, "lazypull socket")
        mirrors = "".join(
            f'[plugins."io.containerd.grpc.v1.cri".registry.mirrors."{h}"]\n  endpoint = ["http://{h}"]\n'
            for h in hosts
        )
        (root / "containerd.toml").write_text(
            f'version = 2\nroot = "{root / "croot"}"\nstate = "{root / "cstate"}"\n'
            f'[grpc]\n  address = "{self.address}"\n[ttrpc]\n  address = "{self.address}.ttrpc"\n'
            f'[plugins."io.containerd.grpc.v1.cri"]\n  disable_apparmor = true\n  restrict_oom_score_adj = true\n'
            f'  sandbox_image = "{pause}"\n'
            f'[plugins."io.containerd.grpc.v1.cri".containerd]\n  snapshotter = "lazypull"\n'
            f"  disable_snapshot_annotations = false\n{mirrors}"
            f'[proxy_plugins.lazypull]\n  type = "snapshot"\n  address = "{self.image_endpoint}"\n'
        )
        self.containerd = subprocess.Popen(
            ["containerd", "--config", str(root / "containerd.toml")],
            stdout=subprocess.DEVNULL,
            stderr=open(root / "containerd.log", "wb"),  # noqa: SIM115 - the child owns it
        )
        wait_for(self.address.exists, 30, "containerd")
        time.sleep(0.5)  # the CRI plugin registers after the socket appears

    def stop(self) -> None:
        stop_processes(self.containerd, self.daemon)
        for pid in _shim_pids(self.root):
            subprocess.run(["kill", "-9", str(pid)], capture_output=True)
        remove_node(self.root)


def _shim_pids(root: Path) -> list[int]:
    """containerd-shim processes (and the pod's processes under them) of this node."""
    out = []
    for pid in Path("/proc").iterdir():
        if pid.name.isdigit():
            try:
                cmd = (pid / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmd and str(root).encode() in cmd:
                out.append(int(pid.name))
    return out


def prepare(net: ShapedNet, reg_host: str, storage_root: Path, work: Path) -> tuple[AuthRegistry, str]:
    """The htpasswd registry and the pause image (pushed to the open registry)."""
    pause = f"{reg_host}/bench/pause:local"
    copy_image(build_pause(work), open_store(pause, RegistryOptions(plain_http=True), for_push=True), tag="local")
    return AuthRegistry(net, storage_root, work / "auth-registry"), pause


def cri_run(
    root: Path, net: ShapedNet, auth: AuthRegistry, pause: str, img: BenchImage, esgz_ref: str, run: int, bg: bool
) -> tuple[float, float, float, int]:
    """One cold run; (pull, create, run) seconds and bytes received."""
    ref = esgz_ref.replace(esgz_ref.split("/", 1)[0], auth.host, 1)
    node = CriNode(root, [auth.host, pause.split("/", 1)[0]], pause, bg)
    try:
        with Kubelet(node.image_endpoint, node.address) as k:
            k.pull(pause, Pod("pause", root / "pods"))  # nodes keep the pause image; not measured
            before = net.rx_bytes()
            t = k.run(ref, Pod(f"bench-{run}", root / "pods"), list(img.workload), user=auth.user, wait_for=img.expect)
        return t.pull_s, t.sandbox_s + t.create_s, t.start_s + t.first_output_s, net.rx_bytes() - before
    finally:
        node.stop()
