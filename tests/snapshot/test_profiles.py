"""The daemon's profile lookup: a published profile becomes each lazy layer's plan, cut at
the byte budget; an absent one is fine; a bad one is ignored and logged once; all cached."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor
from lazypull.prefetch.plan import plan_for
from lazypull.prefetch.profile import FileAccess, Profile
from lazypull.prefetch.publish import EMPTY_CONFIG, _empty, artifact, push_profile
from lazypull.registry.client import RegistryClient
from lazypull.registry.options import RegistryOptions
from lazypull.registry.referrers import push_referrer
from lazypull.registry.repository import RegistryStore
from lazypull.snapshot.profiles import LOOKUPS, ProfileLookup
from lazypull.snapshot.remote import RemoteLayer
from tests.support.images import Entry, write_image
from tests.support.registry import Registry

IMG = "sha256:" + "a" * 64
L1, L2, L3 = ("sha256:" + c * 64 for c in "123")


def test_plan_is_cut_at_the_budget_in_first_access_order_across_layers() -> None:
    profile = Profile(
        IMG,
        {
            L1: [FileAccess("a", 0.0, ((0, 100),)), FileAccess("c", 0.5, ((0, 100),))],
            L2: [FileAccess("b", 0.2, ((0, 50), (100, 50)))],
            L3: [FileAccess("not-lazy", 0.1, ((0, 10),))],  # a layer pulled in full: no plan
        },
    )
    plan = plan_for(profile, [L1, L2], budget=250)
    assert plan.layers == {L1: [["a", [[0, 100]]]], L2: [["b", [[0, 50], [100, 50]]]]}
    assert plan.budgets == {L1: 100, L2: 100} and plan.files == 2 and plan.cut == 1
    whole = plan_for(Profile(IMG, {L1: [FileAccess("w", 0.0)], L2: [FileAccess("x", 1.0, ((0, 10),))]}), [L1, L2], 110)
    assert whole.budgets == {L1: 100, L2: 10}  # what the ranges leave goes to the whole file


def _count(result: str) -> float:
    return LOOKUPS.labels(result)._value.get()  # type: ignore[attr-defined]


@pytest.fixture
def image(registry: Registry, tmp_path: Path) -> tuple[RegistryStore, RemoteLayer]:
    built = write_image(tmp_path / "src", [[Entry("usr/bin/app", data=b"app" * 100)]])
    ref = f"{registry.host}/app/lookup:v1"
    assert main(["copy", "--plain-http", f"oci:{tmp_path / 'src'}:latest", ref]) == 0
    store = RegistryStore.open(ref, RegistryOptions(plain_http=True))
    layer = built.manifest.layers[0]
    lazy = Descriptor(layer.media_type, layer.digest, layer.size, {mt.ANNOTATION_TOC_DIGEST: "sha256:" + "0" * 64})
    return store, RemoteLayer(store.ref, lazy, (lazy,), None, built.manifest_desc.digest)


def test_lookup_absent_then_published(image: tuple[RegistryStore, RemoteLayer]) -> None:
    store, layer = image
    client = RegistryClient(RegistryOptions(plain_http=True))
    absent = _count("absent")
    assert ProfileLookup(1 << 20, 5).plan(client, layer) is None
    assert _count("absent") == absent + 1
    profile = Profile(layer.manifest_digest, {layer.layer.digest: [FileAccess("usr/bin/app", 0.0, ((0, 300),))]})
    push_profile(store, profile)
    lookup = ProfileLookup(1 << 20, 5)
    plan = lookup.plan(client, layer)
    assert plan is not None and plan.layers == {layer.layer.digest: [["usr/bin/app", [[0, 300]]]]}
    applied = _count("applied")
    assert lookup.plan(client, layer) is plan and _count("applied") == applied  # cached: looked up once


def test_a_profile_of_another_image_is_ignored_and_logged_once(
    image: tuple[RegistryStore, RemoteLayer], caplog: pytest.LogCaptureFixture
) -> None:
    store, layer = image
    other = Profile("sha256:" + "f" * 64, {layer.layer.digest: [FileAccess("usr/bin/app", 0.0)]})
    body = other.to_bytes()  # listed as this image's, but its body names another image
    store.push_bytes(_empty(), EMPTY_CONFIG)
    store.push_bytes(Descriptor(mt.PREFETCH_PROFILE_ARTIFACT_TYPE, digestlib.of_bytes(body), len(body)), body)
    subject = store.resolve()
    data, desc = artifact(body, subject, 1)
    push_referrer(store.client, store.ref, data, desc, subject.digest)
    caplog.set_level(logging.INFO)
    client = RegistryClient(RegistryOptions(plain_http=True))
    lookup = ProfileLookup(1 << 20, 5)
    ignored = _count("ignored")
    assert lookup.plan(client, layer) is None and lookup.plan(client, layer) is None
    assert _count("ignored") == ignored + 1
    assert len([r for r in caplog.records if "ignored" in r.getMessage()]) == 1
