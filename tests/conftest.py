"""Shared fixtures: real servers on loopback, started per test or per module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.registry import Registry, start_registry


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="e2e tests need root (CI runs as root)")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A plain-HTTP docker-registry on a free loopback port."""
    reg = start_registry(tmp_path / "registry")
    try:
        yield reg
    finally:
        reg.stop()
