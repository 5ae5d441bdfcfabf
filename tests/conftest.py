"""Shared fixtures: real servers on loopback, started per test or per module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.registry import Registry, start_registry


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The stock-Debian checks run beside the others from the start (pytest_collection_finish);
    # their tests, which wait for them, come last.
    items.sort(key=lambda item: item.nodeid.startswith("tests/e2e/test_stock_debian.py"))
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="e2e tests need root (CI runs as root)")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


def pytest_collection_finish(session: pytest.Session) -> None:
    """The stock-Debian checks, when selected, start now and run beside the other tests."""
    if session.config.option.collectonly:
        return
    wanted = [
        item
        for item in session.items
        if item.nodeid.startswith("tests/e2e/test_stock_debian.py") and not item.get_closest_marker("skip")
    ]
    if wanted:
        from tests.e2e.test_stock_debian import checks
        from tests.support import early

        names = {item.name for item in wanted}
        early.start({name: check for name, check in checks().items() if name in names})


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests.support import early

    early.stop_all()


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


@pytest.fixture(autouse=True)
def fresh_registry_hosts() -> None:
    """Per-host state of this process (counters, breakers) starts empty for each test: its
    registries are new, and their ports are reused by later tests."""
    from lazypull.registry.breaker import BREAKERS
    from lazypull.registry.hoststats import HOST_STATS

    HOST_STATS.reset()
    BREAKERS.reset()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A plain-HTTP docker-registry on a free loopback port."""
    reg = start_registry(tmp_path / "registry")
    try:
        yield reg
    finally:
        reg.stop()
