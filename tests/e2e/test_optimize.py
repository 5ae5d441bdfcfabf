"""`lazypull optimize` through its real interface: runc runs the workload on a lazy FUSE mount."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.convert.check import manifests_of
from lazypull.format import open_layer
from lazypull.oci import mediatypes as mt
from lazypull.registry.options import RegistryOptions
from lazypull.registry.stores import open_store
from tests.support.images import Entry, busybox_layer, write_image
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

WORKLOAD = "cat /data/c.txt /data/a.txt > /tmp/out && cat /tmp/out && sleep 60"


def _image(root: Path, user: str = "") -> None:
    data = [Entry("data", "dir", mode=0o755)]
    data += [Entry(f"data/{n}.txt", data=f"file {n}\n".encode() * 100) for n in "abc"]
    data += [Entry(f"data/unused{i}.bin", data=os.urandom(64 << 10)) for i in range(20)]
    data += [
        Entry("etc", "dir", mode=0o755),
        Entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n"),
    ]
    write_image(root, [busybox_layer(), data], cmd=["/bin/sh", "-c", WORKLOAD], user=user)


def _order(store_ref: str) -> list[list[str]]:
    """Per layer: the files before the prefetch landmark, in blob order."""
    store = open_store(store_ref, RegistryOptions(plain_http=True))
    out = []
    for layer in next(iter(manifests_of(store, None, False))).layers:
        idx = open_layer(store.blob_source(layer), toc_digest=layer.annotations[mt.ANNOTATION_TOC_DIGEST])
        assert idx.lookup(".prefetch.landmark") is not None or idx.lookup(".no.prefetch.landmark") is not None
        files = sorted(
            (e for e in idx.entries() if e.chunks and e.chunks[-1].blob_end <= idx.prefetch_end),
            key=lambda e: e.chunks[0].blob_offset,
        )
        out.append([e.name for e in files])
    return out


def test_optimize_records_what_the_workload_reads(registry: Registry, tmp_path: Path) -> None:
    _image(tmp_path / "src")
    record = tmp_path / "record.jsonl"
    src, dst = f"{registry.host}/opt/app:src", f"{registry.host}/opt/app:opt"
    assert main(["copy", "--plain-http", f"oci:{tmp_path / 'src'}:latest", src]) == 0
    args = ["optimize", "--plain-http", "--oci", "--period", "3", "--record-out", str(record)]
    args += ["--workdir", str(tmp_path / "work"), src, dst]
    assert main(args) == 0
    paths = [json.loads(line)["path"] for line in record.read_text().splitlines()]
    assert "/bin/busybox" in paths  # exec'd
    assert paths.index("/data/c.txt") < paths.index("/data/a.txt")  # first-read order
    assert not any("unused" in p or p == "/data/b.txt" for p in paths)
    base, data = _order(dst)
    assert base == ["bin/busybox"]
    assert [n for n in data if n.startswith("data/")] == ["data/c.txt", "data/a.txt"]
    assert not any("unused" in n for n in data)
    # nothing left behind: the temp work directory, its mounts and the container are gone
    assert not any((tmp_path / "work").iterdir())
    with open("/proc/self/mountinfo") as f:
        assert str(tmp_path / "work") not in f.read()


def test_optimize_overrides(registry: Registry, tmp_path: Path) -> None:
    _image(tmp_path / "src")
    record = tmp_path / "record.jsonl"
    dst = f"oci:{tmp_path / 'out'}:opt"
    args = ["optimize", "--period", "10", "--record-out", str(record), "--workdir", str(tmp_path / "work")]
    args += ["--entrypoint", '["/bin/sh", "-c"]', "--args", '["cat /data/b.txt"]']
    args += [f"oci:{tmp_path / 'src'}:latest", dst]
    assert main(args) == 0
    paths = [json.loads(line)["path"] for line in record.read_text().splitlines()]
    assert "/data/b.txt" in paths and "/data/a.txt" not in paths


def test_optimize_runs_as_the_images_user(tmp_path: Path) -> None:
    _image(tmp_path / "src", user="app")
    record = tmp_path / "record.jsonl"
    args = ["optimize", "--period", "10", "--record-out", str(record), "--workdir", str(tmp_path / "work")]
    args += ["--args", '["-c", "id -u > /tmp/uid; cat /data/b.txt"]', "--entrypoint", '["/bin/sh"]']
    args += [f"oci:{tmp_path / 'src'}:latest", f"oci:{tmp_path / 'out'}:opt"]
    assert main(args) == 0
    paths = [json.loads(line)["path"] for line in record.read_text().splitlines()]
    assert "/data/b.txt" in paths  # uid 1000 could traverse "/" and read the file


def test_optimize_bad_overrides_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _image(tmp_path / "src")
    args = ["optimize", "--entrypoint", "/bin/sh -c", f"oci:{tmp_path / 'src'}:latest", f"oci:{tmp_path / 'o'}:x"]
    assert main(args) != 0
    assert "JSON array" in capsys.readouterr().err
