"""``docker-archive:`` tarballs as sources and destinations, checked against skopeo."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.errors import OCIError
from lazypull.oci import mediatypes as mt
from lazypull.oci.dockerarchive import DockerArchive, parse_archive_ref
from lazypull.oci.types import Manifest
from tests.e2e.interop import snapshot_tree
from tests.support.images import Entry, make_tar

LAYERS = [
    [Entry("etc", "dir"), Entry("etc/hello", data=b"hello\n"), Entry("etc/gone", data=b"x")],
    [Entry("etc/.wh.gone"), Entry("etc/added", data=b"second\n", mode=0o600, uid=7)],
]


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def docker_save(path: Path, tags: list[str], layers: list[bytes] | None = None) -> None:
    """An archive in the layout ``docker save`` (before Docker 25) writes: one directory per
    layer holding an uncompressed ``layer.tar``, ``<id>.json`` config, ``manifest.json``."""
    tars = layers or [make_tar(x) for x in LAYERS]
    diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]
    cfg = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    with tarfile.open(path, "w") as tf:
        names = []
        for i, t in enumerate(tars):
            d = f"{i:064x}"
            _add(tf, f"{d}/VERSION", b"1.0")
            _add(tf, f"{d}/layer.tar", t)
            names.append(f"{d}/layer.tar")
        _add(tf, cfg_name, cfg)
        _add(tf, "manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": tags, "Layers": names}]).encode())


def test_ref_parsing(tmp_path: Path) -> None:
    assert parse_archive_ref("docker-archive:/x/y.tar") == (Path("/x/y.tar"), None)
    assert parse_archive_ref("docker-archive:/x/y.tar:busybox:latest") == (Path("/x/y.tar"), "busybox:latest")
    odd = tmp_path / "a:b.tar"
    odd.write_bytes(b"")
    assert parse_archive_ref(f"docker-archive:{odd}") == (odd, None)


def test_docker_save_archive_converts_checks_and_unpacks(tmp_path: Path) -> None:
    docker_save(tmp_path / "img.tar", ["example.com/app:v1"])
    src = f"docker-archive:{tmp_path / 'img.tar'}"
    store = DockerArchive(tmp_path / "img.tar")
    m = Manifest.parse(store.fetch(store.resolve()))
    assert [x.media_type for x in m.layers] == [mt.OCI_LAYER, mt.OCI_LAYER]
    assert main(["unpack", src, str(tmp_path / "plain")]) == 0
    assert main(["convert", src, f"oci:{tmp_path / 'c'}:v1"]) == 0
    assert main(["check", "--full", f"oci:{tmp_path / 'c'}:v1"]) == 0
    assert main(["unpack", f"oci:{tmp_path / 'c'}:v1", str(tmp_path / "conv")]) == 0
    assert snapshot_tree(tmp_path / "conv") == snapshot_tree(tmp_path / "plain")
    assert (tmp_path / "conv/etc/added").read_bytes() == b"second\n" and not (tmp_path / "conv/etc/gone").exists()


def test_named_image_in_a_multi_image_archive(tmp_path: Path) -> None:
    docker_save(tmp_path / "img.tar", ["busybox:latest"])
    assert DockerArchive(tmp_path / "img.tar", "busybox:latest").resolve()
    with pytest.raises(OCIError, match="no image tagged"):
        DockerArchive(tmp_path / "img.tar", "other:1")
    (tmp_path / "bad.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(OCIError, match="docker archive"):
        DockerArchive(tmp_path / "bad.tar")


def test_convert_to_docker_archive_reads_back_and_skopeo_agrees(tmp_path: Path) -> None:
    docker_save(tmp_path / "img.tar", ["example.com/app:v1"])
    out = tmp_path / "esgz.tar"
    assert (
        main(["convert", f"docker-archive:{tmp_path / 'img.tar'}", f"docker-archive:{out}:example.com/app:esgz"]) == 0
    )
    assert not list(tmp_path.glob(".esgz.tar.*"))  # the staging layout is gone
    assert main(["check", "--full", f"docker-archive:{out}"]) == 3  # verified; docker-archive keeps no TOC annotations
    with tarfile.open(out) as tf:
        (entry,) = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert entry["RepoTags"] == ["example.com/app:esgz"]
        tf.extractall(tmp_path / "layout")
    # The same tar is an OCI layout too.
    assert main(["check", "--full", f"oci:{tmp_path / 'layout'}"]) == 0
    if shutil.which("skopeo"):
        subprocess.run(["skopeo", "copy", f"docker-archive:{out}", f"oci:{tmp_path / 'sk'}:x"], check=True)
        assert main(["check", "--full", f"oci:{tmp_path / 'sk'}:x"]) == 3  # no TOC annotations either
        subprocess.run(
            ["skopeo", "copy", f"oci:{tmp_path / 'sk'}:x", f"docker-archive:{tmp_path / 'sk.tar'}:sk/img:1"],
            check=True,
        )
        assert main(["unpack", f"docker-archive:{tmp_path / 'sk.tar'}", str(tmp_path / "sk-out")]) == 0
        assert main(["unpack", f"docker-archive:{out}", str(tmp_path / "ours-out")]) == 0
        assert snapshot_tree(tmp_path / "sk-out") == snapshot_tree(tmp_path / "ours-out")


def test_copy_from_layout_to_archive(tmp_path: Path) -> None:
    from tests.support.images import write_image

    write_image(tmp_path / "l", LAYERS)
    assert main(["copy", f"oci:{tmp_path / 'l'}:latest", f"docker-archive:{tmp_path / 'o.tar'}:a/b:c"]) == 0
    store = DockerArchive(tmp_path / "o.tar", "a/b:c")
    assert len(Manifest.parse(store.fetch(store.resolve())).layers) == 2
