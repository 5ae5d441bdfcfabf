"""``lazypull profile push / list / show / rm`` against a real registry: the profile is an
artifact referring to the image (registry 2.8: listed under the ``sha256-<hex>`` tag), the
image is unchanged, runs merge, and only the write credentials write."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.oci import mediatypes as mt
from lazypull.prefetch.profile import FileAccess, Profile
from lazypull.registry.options import RegistryOptions
from lazypull.registry.reference import Reference
from lazypull.registry.referrers import tag_for
from lazypull.registry.repository import RegistryStore
from tests.support.images import Entry, write_image
from tests.support.registry import Registry, start_registry

LAYER = [Entry("usr/bin/app", data=b"app" * 100), Entry("etc/conf", data=b"conf\n")]


def _image(registry: Registry, tmp_path: Path, *auth: str) -> tuple[str, str, str]:
    """(reference, manifest digest, layer digest) of a one-layer image pushed to *registry*."""
    built = write_image(tmp_path / "src", [LAYER])
    ref = f"{registry.host}/app/prof:v1"
    assert main(["copy", "--plain-http", *auth, f"oci:{tmp_path / 'src'}:latest", ref]) == 0
    return ref, built.manifest_desc.digest, built.manifest.layers[0].digest


def _write(path: Path, image: str, layer: str, files: list[FileAccess]) -> Path:
    path.write_bytes(Profile(image, {layer: files}).to_bytes())
    return path


@pytest.fixture(autouse=True)
def no_docker_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials of the machine's user reach these tests."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("DOCKER_CONFIG", "LAZYPULL_USER", "LAZYPULL_PUSH_USER"):
        monkeypatch.delenv(var, raising=False)


def test_push_list_show_merge_rm(registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref, image, layer = _image(registry, tmp_path)
    first = _write(tmp_path / "a.json", image, layer, [FileAccess("usr/bin/app", 0.1, ((0, 100),))])
    second = _write(tmp_path / "b.json", image, layer, [FileAccess("etc/conf", 0.0), FileAccess("usr/bin/app", 0.3)])
    capsys.readouterr()

    assert main(["profile", "push", "--plain-http", ref, str(first)]) == 0
    pushed = capsys.readouterr()
    assert "referrers tag schema" in pushed.err and "image is unchanged" in pushed.err
    store = RegistryStore.open(ref, RegistryOptions(plain_http=True))
    assert store.resolve().digest == image
    data, _, _ = store.client.get_manifest(Reference(store.ref.registry, store.ref.repository, tag_for(image)))
    (listed,) = json.loads(data)["manifests"]
    assert listed["digest"] == pushed.out.strip() and listed["artifactType"] == mt.PREFETCH_PROFILE_ARTIFACT_TYPE

    assert main(["profile", "push", "--plain-http", "--merge-published", ref, str(second)]) == 0
    merged_digest = capsys.readouterr().out.strip()
    assert main(["profile", "list", "--plain-http", ref]) == 0
    (row,) = capsys.readouterr().out.splitlines()
    assert row.split("\t")[0] == merged_digest and row.split("\t")[3] == "2"  # one artifact, two runs

    assert main(["profile", "show", "--plain-http", ref]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["image"] == image and shown["runs"] == 2
    (files,) = [x["files"] for x in shown["layers"] if x["digest"] == layer]
    assert [f["path"] for f in files] == ["etc/conf", "usr/bin/app"]  # medians 0.0 < 0.2
    assert "ranges" not in files[1]  # read whole in one run: whole

    assert main(["profile", "rm", "--plain-http", ref]) == 0
    assert capsys.readouterr().out.split() == [merged_digest]
    assert main(["profile", "list", "--plain-http", ref]) == 0
    assert capsys.readouterr().out == ""
    assert main(["profile", "show", "--plain-http", ref]) == 1
    assert "no prefetch profile" in capsys.readouterr().err


def test_a_profile_of_another_image_is_refused(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref, _image_digest, layer = _image(registry, tmp_path)
    other = _write(tmp_path / "o.json", "sha256:" + "f" * 64, layer, [FileAccess("etc/conf", 0.0)])
    assert main(["profile", "push", "--plain-http", ref, str(other)]) == 1
    assert "recorded for sha256:ffff" in capsys.readouterr().err


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[Registry]:
    pw = tmp_path / "htpasswd"
    lines = [
        subprocess.run(["htpasswd", "-Bbn", u, p], capture_output=True, text=True, check=True).stdout.strip()
        for u, p in (("reader", "read-pw"), ("writer", "write-pw"))
    ]
    pw.write_text("\n".join(lines) + "\n")
    reg = start_registry(tmp_path / "reg", htpasswd=pw)
    try:
        yield reg
    finally:
        reg.stop()


def test_only_the_write_credentials_push(
    auth_registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAZYPULL_PASSWORD", "write-pw")
    ref, image, layer = _image(auth_registry, tmp_path, "--user", "writer")
    prof = str(_write(tmp_path / "p.json", image, layer, [FileAccess("etc/conf", 0.0)]))
    monkeypatch.setenv("LAZYPULL_PASSWORD", "read-pw")
    capsys.readouterr()
    # The pull credentials are given, the write ones are not: nothing is written with them.
    assert main(["profile", "push", "--plain-http", "--user", "reader", ref, prof]) == 1
    assert "credentials" in capsys.readouterr().err
    monkeypatch.setenv("LAZYPULL_PUSH_PASSWORD", "write-pw")
    assert main(["profile", "push", "--plain-http", "--user", "reader", "--push-user", "writer", ref, prof]) == 0
    capsys.readouterr()
    assert main(["profile", "list", "--plain-http", "--user", "reader", ref]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
