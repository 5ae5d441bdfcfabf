"""The podman bench modes' node: a private storage.conf per run, the store only when lazy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lazypull.bench.podman import MODES, PodmanNode
from lazypull.bench.runner import MODES as ALL_MODES


def test_the_modes_are_known_to_the_bench() -> None:
    assert set(MODES) <= set(ALL_MODES)


@pytest.mark.skipif(shutil.which("podman") is None, reason="needs podman")
def test_a_full_pull_node_has_its_own_storage_and_no_store(tmp_path: Path) -> None:
    node = PodmanNode(tmp_path / "node", "podman", "127.0.0.1:1", background_fetch=False)
    conf = (tmp_path / "node" / "storage.conf").read_text()
    assert f'graphroot = "{tmp_path / "node" / "graph"}"' in conf and "additionallayerstores" not in conf
    assert node.store is None
    node.stop()
    assert not (tmp_path / "node").exists()
