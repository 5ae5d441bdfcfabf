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


def _clear_keyring(name: str) -> None:
    from lazypull.service.cri.keyring import KernelKeyring

    try:
        KernelKeyring(name).clear()
    except OSError:
        pass


@pytest.fixture(scope="session", autouse=True)
def session_keyring() -> Iterator[str]:
    """Daemons of module-wide fixtures keep the kubelet's credentials in a kernel keyring of
    this run's own (never a node's ``lazypull:keychain``), gone after it."""
    from lazypull.service.cri.keyring import KEYRING_ENV

    name = f"lazypull:test:{os.getpid()}"
    old = os.environ.get(KEYRING_ENV)
    os.environ[KEYRING_ENV] = name
    yield name
    if old is None:
        os.environ.pop(KEYRING_ENV, None)
    else:
        os.environ[KEYRING_ENV] = old
    _clear_keyring(name)


@pytest.fixture(autouse=True)
def own_keyring(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test (and the daemons it starts) has a keyring of its own: tests never see
    each other's credentials."""
    from lazypull.service.cri.keyring import KEYRING_ENV

    name = f"lazypull:test:{os.getpid()}:{request.node.nodeid}"[:200]
    monkeypatch.setenv(KEYRING_ENV, name)
    yield name
    _clear_keyring(name)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A plain-HTTP docker-registry on a free loopback port."""
    reg = start_registry(tmp_path / "registry")
    try:
        yield reg
    finally:
        reg.stop()
