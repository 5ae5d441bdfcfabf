"""Rotated credentials reach the layers already served: the daemon's renewal pass, and the
layer server's registry client taking a new credential in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lazypull.fs.spec import LayerSpec, RegistryClients
from lazypull.registry.credentials import Credential
from lazypull.registry.options import credential_to_json
from lazypull.registry.reference import Reference
from lazypull.snapshot.credrenew import renew_once
from lazypull.snapshot.lifecycle import Entry, State

OLD, NEW = Credential("robot", "old-secret"), Credential("robot", "new-secret")


class Source:
    def __init__(self, creds: dict[str, Credential]) -> None:
        self.creds = creds

    def get(self, ref: Reference) -> Credential | None:
        return self.creds.get(f"{ref.registry}/{ref.repository}")


class LayerServer:
    """The layer server's side of ``renew``: which layers it was handed what."""

    def __init__(self, serving: set[Path]) -> None:
        self.serving = serving
        self.renewed: list[tuple[Path, dict[str, Any]]] = []

    def renew(self, spec: dict[str, Any], mountpoint: Path) -> bool:
        self.renewed.append((mountpoint, spec))
        return mountpoint in self.serving


class Lifecycle:
    def __init__(self, entries: list[Entry[object]]) -> None:
        self.entries = entries

    def serving(self) -> list[tuple[Entry[object], object]]:
        return [(e, object()) for e in self.entries]


class Layers:
    def __init__(self, entries: list[Entry[object]], serving: set[Path]) -> None:
        self.lifecycle = Lifecycle(entries)
        self.client = LayerServer(serving)


def _entry(name: str, ref: str, cred: Credential | None) -> Entry[object]:
    registry: dict[str, Any] = {"plain_http": True}
    if cred is not None:
        registry["credential"] = credential_to_json(cred)
    spec = {"layer": {"digest": "sha256:" + name * 64}, "ref": ref, "registry": registry}
    return Entry("sha256:" + name * 64, Path(f"/mnt/{name}"), spec, state=State.SERVING)


def test_only_changed_explicit_credentials_are_handed_over() -> None:
    rotated = _entry("a", "reg.io/team/app:1", OLD)
    current = _entry("b", "reg.io/team/web:1", NEW)
    anonymous = _entry("c", "reg.io/team/app:1", None)  # docker config or anonymous: left alone
    unknown = _entry("d", "other.io/x:1", OLD)  # no source has one now: keeps its own
    gone = _entry("e", "reg.io/team/app:1", OLD)  # no longer serving at the layer server
    layers = Layers([rotated, current, anonymous, unknown, gone], {Path("/mnt/a")})
    source = Source({"reg.io/team/app": NEW, "reg.io/team/web": NEW})
    assert renew_once(layers, source) == 1  # type: ignore[arg-type]
    assert [m for m, _ in layers.client.renewed] == [Path("/mnt/a"), Path("/mnt/e")]
    assert rotated.spec["registry"]["credential"] == credential_to_json(NEW)
    assert rotated.spec["registry"]["plain_http"] is True
    assert gone.spec["registry"]["credential"] == credential_to_json(OLD)  # not taken: tried again next pass
    layers.client.renewed.clear()
    assert renew_once(layers, source) == 0  # type: ignore[arg-type]
    assert [m for m, _ in layers.client.renewed] == [Path("/mnt/e")]


def test_the_open_layers_client_takes_the_rotated_credential_in_place() -> None:
    def spec(cred: Credential) -> LayerSpec:
        return LayerSpec(
            layer={"digest": "sha256:" + "a" * 64, "size": 1, "mediaType": "x"},
            cache_dir="/tmp/x",
            ref="reg.io/team/app:1",
            registry={"plain_http": True, "credential": credential_to_json(cred)},
        )

    clients = RegistryClients()
    old = clients.get(spec(OLD))
    host = old._host(Reference.parse("reg.io/team/app:1"))  # type: ignore[attr-defined]
    assert host.auth.credential == OLD
    assert clients.renew(spec(OLD), spec(NEW))
    assert host.auth.credential == NEW and old.opts.credential == NEW  # type: ignore[attr-defined]
    assert clients.get(spec(NEW)) is old  # found under the new credential from now on
    assert clients.get(spec(OLD)) is not old  # a layer mounted with the old one gets a client of its own
    assert not clients.renew(spec(NEW), spec(NEW))
