"""``lazypull status`` for pods through the kubelet's CRI path: which pod sandbox pulled which
image, where the image's credentials came from (never the credentials), its prefetch hint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazypull.registry.reference import Reference
from lazypull.service.cri.kubelet import Kubelet, Pod
from tests.e2e.test_cri import PASSWORD, USER, Node, World, make_node
from tests.e2e.test_cri import world as world
from tests.e2e.test_status import lazypull

pytestmark = pytest.mark.e2e


def test_status_ties_pods_to_images_with_credential_source_and_hint(tmp_path: Path, world: World) -> None:
    with make_node(tmp_path, world) as node:
        _check(node, world)


def _check(node: Node, world: World) -> None:
    pod = Pod("web", node.root / "pods" / "web").with_prefetch(["/app/config/*"])
    with Kubelet(node.daemon.address, node.cd.address) as kubelet:
        kubelet.run(
            world.image,
            pod,
            ["/bin/sh", "-c", "cat /app/config/a.yaml >/dev/null; echo ok"],
            user=f"{USER}:{PASSWORD}",
            wait_for="ok",
        )
    res = lazypull("status", "--json", "--address", str(node.daemon.address))
    assert res.returncode == 0, res.stderr
    assert PASSWORD not in res.stdout
    report = json.loads(res.stdout)
    ref = str(Reference.parse(world.image))
    img = {i["ref"]: i for i in report["images"]}[ref]
    assert (img["mode"], img["credentials"], img["pods"]) == ("lazy", "cri", ["default/web"])
    assert all(x["state"] == "serving" and x["healthy"] for x in img["layers"])
    [p] = [p for p in report["pods"] if p["name"] == "web"]
    assert (p["namespace"], p["uid"], p["images"]) == ("default", pod.uid, [ref])
    assert p["hint"]["state"] == "done" and p["hint"]["files"] == 3
    table = lazypull("status", "--address", str(node.daemon.address))
    assert table.returncode == 0 and "default/web" in table.stdout and "done: 3 files" in table.stdout
    # A restarted daemon shows the image from its snapshot store, its credentials from the keyring.
    node.daemon.stop()
    node.daemon.start()
    res = lazypull("status", "--json", "--address", str(node.daemon.address))
    assert res.returncode == 0, res.stderr
    img = {i["ref"]: i for i in json.loads(res.stdout)["images"]}[ref]
    assert (img["mode"], img["credentials"]) == ("lazy", "keyring-restored")
    assert all(x["state"] == "serving" for x in img["layers"]) and PASSWORD not in res.stdout
