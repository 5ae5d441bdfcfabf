"""``lazypull profile record`` through its real interface: runc runs the workload on the image
mounted lazily, and the profile names the image's own layers, files and ranges in the order
they were first read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lazypull.cli.main import main
from tests.support.images import Entry, busybox_layer, write_image
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

BIG = os.urandom(1 << 20)


def test_record_writes_and_pushes_the_profile(
    registry: Registry, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no docker login of the machine's user
    data = [Entry("data", "dir", mode=0o755), Entry("data/big.bin", data=BIG)]
    data += [Entry(f"data/{n}.txt", data=f"file {n}\n".encode() * 100) for n in "abc"]
    built = write_image(tmp_path / "src", [busybox_layer(), data])
    ref = f"{registry.host}/rec/app:v1"
    assert main(["copy", "--plain-http", f"oci:{tmp_path / 'src'}:latest", ref]) == 0
    out = tmp_path / "profile.json"
    args = ["profile", "record", "--plain-http", "--period", "20", "--workdir", str(tmp_path / "work")]
    args += ["--out", str(out), "--push", ref, "--", "/bin/sh", "-c"]
    args += ["cat /data/c.txt /data/a.txt >/dev/null; dd if=/data/big.bin bs=4096 skip=64 count=1 2>/dev/null | wc -c"]
    capfd.readouterr()
    assert main(args) == 0
    err = capfd.readouterr().err
    assert "pushed sha256:" in err, err

    profile = json.loads(out.read_text())
    assert profile["image"] == built.manifest_desc.digest
    base, top = (layer.digest for layer in built.manifest.layers)
    layers = {x["digest"]: x["files"] for x in profile["layers"]}
    assert set(layers) == {base, top}
    assert [f["path"] for f in layers[base]] == ["bin/busybox"]
    files = {f["path"]: f for f in layers[top]}
    assert list(files) == ["data/c.txt", "data/a.txt", "data/big.bin"]  # first-read order
    assert files["data/c.txt"]["t"] <= files["data/a.txt"]["t"] <= files["data/big.bin"]["t"]
    ((offset, length),) = files["data/big.bin"]["ranges"]  # the page the workload read, not the file
    assert offset <= 64 * 4096 < offset + length and length < len(BIG) // 2

    assert main(["profile", "show", "--plain-http", ref]) == 0
    assert json.loads(capfd.readouterr().out)["layers"] == profile["layers"]
    assert not any((tmp_path / "work").iterdir())  # the trial image, its mount and the container are gone
