"""Resolving a Prepare's layer against a registry that does not answer: one deadline,
failures remembered per image, fallback logged at WARNING."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Manifest
from lazypull.registry.client import RegistryClient
from lazypull.registry.options import RegistryOptions
from lazypull.registry.repository import RegistryStore
from lazypull.snapshot.remote import LayerResolver, NotRemote
from lazypull.snapshot.snapshotter import RemoteSettings, Snapshotter
from tests.support.images import Entry, write_image
from tests.support.proxy import Proxy, start_proxy
from tests.support.registry import Registry

TIMEOUT = 2.0


@pytest.fixture
def image(registry: Registry, tmp_path: Path) -> Iterator[tuple[Proxy, dict[str, str], dict[str, str]]]:
    """Labels for two layers of one eStargz image, as ctr-remote sends them, via a proxy."""
    write_image(tmp_path / "src", [[Entry("a", data=b"a" * 1000)], [Entry("b", data=b"b" * 1000)]])
    plain = f"{registry.host}/res/img:orig"
    assert main(["copy", "--plain-http", f"oci:{tmp_path / 'src'}:latest", plain]) == 0
    assert main(["convert", "--plain-http", "--oci", plain, f"{registry.host}/res/img:esgz"]) == 0
    proxy = start_proxy(registry.url)
    try:
        ref = f"{proxy.host}/res/img:esgz"
        store = RegistryStore.open(ref, RegistryOptions(plain_http=True))
        d = store.resolve()
        layers = Manifest.parse(store.fetch(d), d.media_type).layers
        labels = [{mt.LABEL_STARGZ_REFERENCE: ref, mt.LABEL_STARGZ_DIGEST: d.digest} for d in layers]
        yield proxy, labels[0], labels[1]
    finally:
        proxy.stop()


def test_stalled_registry_resolution_is_bounded_and_remembered(
    image: tuple[Proxy, dict[str, str], dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    proxy, first, second = image
    resolver = LayerResolver(RegistryClient(RegistryOptions(plain_http=True)), timeout=TIMEOUT, failure_ttl=1.5)
    proxy.faults.stall = "accept"
    caplog.set_level(logging.WARNING)
    t0 = time.monotonic()
    with pytest.raises(NotRemote, match="manifest"):
        resolver.resolve(first)
    assert time.monotonic() - t0 < TIMEOUT + 1
    assert "normal pull" in caplog.text and "res/img" in caplog.text
    t0 = time.monotonic()
    with pytest.raises(NotRemote, match="remembered"):
        resolver.resolve(second)  # the same image: no second wait
    assert time.monotonic() - t0 < 0.5
    proxy.heal()
    time.sleep(1.6)  # the remembered failure expires; the registry answers again
    assert resolver.resolve(second).layer.digest == second[mt.LABEL_STARGZ_DIGEST]


def fallbacks(reason: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("lazypull_fallback_total", {"reason": reason}) or 0.0


def test_plain_http_registry_not_in_plain_http_hosts_says_the_fix_and_is_counted(
    image: tuple[Proxy, dict[str, str], dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    # The daemon's client without plain_http_hosts, as with a local registry and
    # `ctr-remote image rpull --plain-http`: one WARNING naming the config key, each layer counted.
    proxy, first, second = image
    resolver = LayerResolver(RegistryClient(RegistryOptions()), timeout=TIMEOUT, failure_ttl=30)
    caplog.set_level(logging.WARNING)
    before = fallbacks("plain_http")
    for labels in (first, second):
        with pytest.raises(NotRemote) as ei:
            resolver.resolve(labels)
        assert ei.value.reason == "plain_http"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f'plain_http_hosts = ["{proxy.host}"]' in warnings[0] and "normal pull" in warnings[0]
    assert "use --insecure" not in warnings[0]
    assert fallbacks("plain_http") == before + 2


def test_unlabelled_and_failed_mounts_are_counted_by_reason(
    image: tuple[Proxy, dict[str, str], dict[str, str]],
) -> None:
    _proxy, first, _second = image
    resolver = LayerResolver(RegistryClient(RegistryOptions(plain_http=True)), timeout=TIMEOUT, failure_ttl=30)
    no_labels, mount_failed = fallbacks("no_labels"), fallbacks("mount_failed")
    with pytest.raises(NotRemote):
        resolver.resolve({})
    assert fallbacks("no_labels") == no_labels + 1
    resolver.resolve(first)  # lazily mountable: not a fallback
    resolver.remember_failure(first, "mounting layer x failed: its TOC did not arrive")  # the snapshotter's call
    assert fallbacks("mount_failed") == mount_failed + 1
    with pytest.raises(NotRemote, match="remembered"):
        resolver.resolve(first)
    assert fallbacks("mount_failed") == mount_failed + 2


def test_each_image_remembers_which_layers_fell_back_and_why(
    image: tuple[Proxy, dict[str, str], dict[str, str]], tmp_path: Path
) -> None:
    """What ``lazypull status`` shows: the snapshotter writes each fallback down per image."""
    proxy, first, second = image
    resolver = LayerResolver(RegistryClient(RegistryOptions()), timeout=TIMEOUT, failure_ttl=30)  # no plain_http_hosts
    sn = Snapshotter(tmp_path / "root", resolver, RemoteSettings(cache_dir=tmp_path / "cache", registry={}))
    try:
        for i, labels in enumerate((first, second)):
            sn.prepare(f"extract-{i}", "", {**labels, mt.LABEL_SNAPSHOT_REF: f"layer-{i}"})  # a normal snapshot
        [img] = sn.book.images()
        assert img.ref == f"{proxy.host}/res/img:esgz" and img.prepared_at is not None
        assert [(d, r.mode, r.reason) for d, r in img.layers.items()] == [
            (first[mt.LABEL_STARGZ_DIGEST], "fallback", "plain_http"),
            (second[mt.LABEL_STARGZ_DIGEST], "fallback", "plain_http"),
        ]
        assert "plain_http_hosts" in next(iter(img.layers.values())).detail
    finally:
        sn.close()
