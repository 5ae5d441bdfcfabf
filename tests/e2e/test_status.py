"""``lazypull status`` and the new metrics on a real node: containerd, the daemon, its layer
server, a registry; one image mounted lazily, one that falls back (plain gzip: ``not_lazy``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lazypull.registry.reference import Reference
from tests.e2e.test_snapshotter import BIG, OTHER, Node, World, make_node, md5
from tests.e2e.test_snapshotter import world as world
from tests.support.net import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def node(tmp_path: Path, world: World) -> Iterator[Node]:
    with make_node(tmp_path, world) as n:
        yield n


def lazypull(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, as an operator runs it."""
    code = "import sys; from lazypull.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


def status(node: Node) -> dict[str, Any]:
    res = lazypull("status", "--json", "--address", str(node.daemon.address))
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_status_shows_lazy_and_fallback_images_and_metrics_agree(node: Node, world: World) -> None:
    rpull = ("image", "rpull", "--plain-http", "--snapshotter", "lazypull")
    node.cd.ctr(*rpull, world.esgz, tool="ctr-remote")
    node.cd.ctr(*rpull, world.plain, tool="ctr-remote")  # labelled for lazy pulling, but plain gzip
    out = node.cd.ctr(
        "run", "--rm", "--snapshotter", "lazypull", world.esgz, "st1", "/bin/sh", "-c", "md5sum /data/other.bin"
    ).stdout
    assert md5(OTHER) in out
    out = node.cd.ctr("run", "--rm", "--snapshotter", "lazypull", world.plain, "st2", "/bin/md5sum", "/data/big.bin")
    assert md5(BIG) in out.stdout

    report = status(node)
    images = {i["ref"]: i for i in report["images"]}
    lazy, plain = images[str(Reference.parse(world.esgz))], images[str(Reference.parse(world.plain))]
    assert lazy["mode"] == "lazy" and lazy["reasons"] == [] and lazy["credentials"] == "anonymous"
    assert len(lazy["layers"]) == len(world.esgz_layers)
    for layer in lazy["layers"]:
        assert (layer["mode"], layer["state"], layer["healthy"], layer["server_state"]) == (
            "lazy",
            "serving",
            True,
            "serving",
        )
    assert lazy["fetched_bytes"] > 0  # the run read busybox and other.bin through the mounts
    assert lazy["first_read_seconds"] is not None and lazy["first_read_seconds"] > 0
    assert any(x["first_read_latency_seconds"] for x in lazy["layers"])
    assert plain["mode"] == "fallback" and plain["reasons"] == ["not_lazy"]
    assert [x["reason"] for x in plain["layers"]] == ["not_lazy"] * len(plain["layers"]) and plain["layers"]
    assert report["layer_server"]["up"] and report["daemon"]["root"] == str(node.daemon.root)

    table = lazypull("status", "--address", str(node.daemon.address))
    assert table.returncode == 0, table.stderr
    assert world.esgz in table.stdout and world.plain in table.stdout and "not_lazy" in table.stdout

    url = f"http://127.0.0.1:{node.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert metric(text, "lazypull_fallback_total", '{reason="not_lazy"}') >= len(plain["layers"])
    assert metric(text, "lazypull_fallback_layers_total", '{reason="not_lazy"}') >= len(plain["layers"])
    host = Reference.parse(world.esgz).registry
    assert metric(text, "lazypull_fetch_duration_seconds_count", f'{{host="{host}"}}') > 0
    assert metric(text, "lazypull_image_first_read_seconds_count") == 1  # once per image, however often asked
    assert metric(text, "lazypull_layer_first_read_seconds_count") >= 1


def test_status_says_when_the_daemon_is_not_running(node: Node) -> None:
    node.daemon.stop()
    wait_for(lambda: not node.daemon.address.exists() or node.daemon.proc.poll() is not None, 10, "daemon exit")  # type: ignore[union-attr]
    res = lazypull("status", "--address", str(node.daemon.address))
    assert res.returncode == 1 and "the lazypull daemon is not running" in res.stderr
