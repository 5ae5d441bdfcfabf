"""The node-scale workload: its images, its usage accounting, and one small run on a real node."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from lazypull.bench import nodescale
from lazypull.bench.runner import BenchConfig
from lazypull.oci.types import Descriptor
from tests.support.reference import reference_daemon
from tests.support.registry import Registry

REFERENCE = reference_daemon()


def test_images_have_distinct_layers_and_busybox_first(tmp_path: Path) -> None:
    spec = nodescale.NodeScaleSpec(images=2, layers=3)
    layouts = nodescale.build_images(tmp_path, spec)
    digests = []
    for layout in layouts:
        layers = json.loads(layout.fetch(layout.resolve()))["layers"]
        assert len(layers) == 3
        digests += [d["digest"] for d in layers]
    assert len(set(digests)) == 6
    first = nodescale.build_images(tmp_path, spec)[0]  # cached: the same layout again
    desc = json.loads(first.fetch(first.resolve()))["layers"][0]
    blob = Descriptor(desc["mediaType"], desc["digest"], desc["size"])
    with first.open_blob(blob) as f, tarfile.open(fileobj=f, mode="r|gz") as tf:
        names = [m.name for m in tf]
    assert "bin/busybox" in names and "layer-000/file-0" in names


def test_modes_without_a_snapshotter_daemon_are_skipped() -> None:
    # bench's default modes start with overlayfs: node-scale runs the lazy ones only
    assert nodescale.node_scale_modes(["overlayfs", "lazypull", "lazypull-soci", "reference"]) == (
        ["lazypull", "reference"],
        ["overlayfs", "lazypull-soci"],
    )


def test_usage_counts_descendants_and_detached_servers(tmp_path: Path) -> None:
    owned = tmp_path / "snapshotter-root"
    root = subprocess.Popen([sys.executable, "-c", "import subprocess,sys,time; time.sleep(30)"])
    detached = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", str(owned / "layers")], start_new_session=True
    )
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", str(owned) + ".toml"])
    try:
        rss, procs = nodescale.tree_usage(root.pid, owned)
        assert procs == 2
        both = _rss(root.pid) + _rss(detached.pid)  # the root and the detached one, not the unrelated one
        assert both > 0 and abs(rss - both) < min(_rss(unrelated.pid), both) // 2
    finally:
        for p in (root, detached, unrelated):
            p.kill()
            p.wait()


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["lazypull", "reference"])
def test_small_node_scale_run(mode: str, registry: Registry, tmp_path: Path) -> None:
    if mode == "reference" and REFERENCE is None:
        pytest.skip("reference daemon not found (set LAZYPULL_REFERENCE_SNAPSHOTTER)")
    cfg = BenchConfig(images=[], modes=[mode], workdir=tmp_path, reference_snapshotter=str(REFERENCE))
    spec = nodescale.NodeScaleSpec(images=2, layers=3)
    images = nodescale.push_images(cfg, spec, registry.host)
    res = nodescale.run_mode(cfg, spec, images, mode)
    assert res.failures == []
    assert res.fallbacks == 0
    assert len(res.rpull_s) == 2 and len(res.run_s) == 2
    assert res.processes >= 1 and res.rss_bytes > 0
    assert "| node-scale 2x3 |" in nodescale.markdown([res])


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
