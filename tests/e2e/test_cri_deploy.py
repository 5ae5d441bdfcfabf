"""The Kubernetes deploy files: manifests decode as typed Kubernetes objects (kubectl,
offline), the daemon's config in the DaemonSet and in deploy/ loads with the CRI keys."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from lazypull.service.config import DaemonConfig

pytestmark = pytest.mark.e2e

DEPLOY = Path(__file__).parents[2] / "deploy"
# Debian's kubernetes-client, or any kubectl; LAZYPULL_KUBECTL picks one (e.g. unpacked from the .deb).
KUBECTL = os.environ.get("LAZYPULL_KUBECTL") or shutil.which("kubectl")
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))


def kubectl(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    assert KUBECTL
    env = {**os.environ, "KUBECONFIG": os.devnull}  # never a cluster: everything here is offline
    return subprocess.run([KUBECTL, *args], capture_output=True, text=True, env=env, input=input, timeout=60)


def objects(path: Path) -> list[dict[str, object]]:
    res = kubectl("label", "--local", "-f", str(path), "-o", "json", "lazypull.dev/checked=true")
    assert res.returncode == 0, res.stderr
    out, text, dec = [], res.stdout.strip(), json.JSONDecoder()
    while text:  # one JSON document per object
        obj, end = dec.raw_decode(text)
        out += obj["items"] if obj.get("kind") == "List" else [obj]
        text = text[end:].strip()
    return out


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (Debian package kubernetes-client) not installed")
@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifests_decode_as_typed_objects(path: Path) -> None:
    # `set resources --local` converts every object to its Go type (a wrong field type fails);
    # objects without a pod template are reported as such, which is the expected answer for them.
    res = kubectl("set", "resources", "--local", "-f", str(path), "--requests=cpu=100m", "-o", "name")
    assert "unable to decode" not in res.stderr and "error parsing" not in res.stderr, res.stderr
    for line in res.stderr.splitlines():
        assert not line.strip() or "does not have a pod template" in line, res.stderr
    assert objects(path)


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed")
def test_kubectl_check_can_fail() -> None:
    bad = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec: {selector: 5}\n"
    res = kubectl("set", "resources", "--local", "-f", "-", "--requests=cpu=1m", "-o", "name", input=bad)
    assert res.returncode != 0 and "decode" in res.stderr


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed")
def test_daemonset_config_serves_the_image_service(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    items = objects(DEPLOY / "kubernetes" / "lazypull-daemonset.yaml")
    cm = next(o for o in items if o["kind"] == "ConfigMap")
    cfg = DaemonConfig.from_mapping(tomllib.loads(cm["data"]["config.toml"]))  # type: ignore[index]
    assert cfg.enable_keychain and cfg.image_service_path == "/run/containerd/containerd.sock"
    ds = next(o for o in items if o["kind"] == "DaemonSet")
    mounts = ds["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]  # type: ignore[index]
    assert {m["mountPath"] for m in mounts} >= {"/run/containerd", "/run/containerd-lazypull-grpc", "/dev/fuse"}
    assert not [r for r in caplog.records if "unknown key" in r.getMessage() and "cri" in r.getMessage()]


def test_node_config_and_kubelet_files(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    cfg = DaemonConfig.load(DEPLOY / "config.toml")
    assert cfg.enable_keychain
    assert not [r for r in caplog.records if "unknown key" in r.getMessage() and "cri" in r.getMessage()]
    sock = "unix:///run/containerd-lazypull-grpc/containerd-lazypull-grpc.sock"
    assert f"--image-service-endpoint={sock}" in (DEPLOY / "kubelet" / "kubelet-default").read_text()
    assert f"imageServiceEndpoint: {sock}" in (DEPLOY / "kubelet" / "kubelet-config.yaml").read_text()
