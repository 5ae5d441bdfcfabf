"""eStargz interoperability with the reference converter (ctr-remote) and containerd."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.format import BytesSource, build_estargz
from lazypull.format.estargz_reader import read_toc_member
from lazypull.format.footer import parse_footer
from lazypull.oci import mediatypes as mt
from lazypull.oci.layout import OCILayout
from lazypull.oci.types import Manifest
from tests.e2e.interop import export_layout, import_layout, snapshot_tree
from tests.support.containerd import Containerd, start_containerd
from tests.support.images import Entry, busybox_layer, write_image

pytestmark = pytest.mark.e2e

BIG = bytes(range(251)) * 5000  # > chunk size below


def feature_layers() -> list[list[Entry]]:
    return [
        busybox_layer(),
        [
            Entry("data", "dir", mode=0o755),
            Entry("data/big.bin", data=BIG, mode=0o640, uid=1000, gid=1000),
            Entry("data/empty"),
            Entry("data/hello.txt", data=b"hello\n", xattrs={"user.note": "kept"}),
            Entry("data/hard", "hardlink", link="data/hello.txt"),
            Entry("data/sym", "symlink", link="hello.txt"),
            Entry("data/abs", "symlink", link="/data/hello.txt"),
            Entry("data/null", "char", devmajor=1, devminor=3, mode=0o666),
            Entry("data/loop", "block", devmajor=7, devminor=0, mode=0o660),
            Entry("data/fifo", "fifo"),
            Entry("data/suid", data=b"#!/bin/sh\n", mode=0o4755),
            Entry("data/" + "long-" * 40 + "名前.txt", data=b"non-ascii long name"),
            Entry("data/gone", data=b"to be removed"),
            Entry("data/opq", "dir"),
            Entry("data/opq/lower", data=b"lower"),
        ],
        [
            Entry("data/.wh.gone"),
            Entry("data/opq", "dir"),
            Entry("data/opq/.wh..wh..opq"),
            Entry("data/opq/upper", data=b"upper"),
            Entry("data/added.txt", data=b"third layer\n"),
        ],
    ]


@pytest.fixture(scope="module")
def cd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    c = start_containerd(tmp_path_factory.mktemp("containerd"))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, cd: Containerd) -> dict[str, Path]:
    """The original image, the reference's eStargz conversion, and lazypull's."""
    root = tmp_path_factory.mktemp("images")
    built = write_image(root / "orig", feature_layers(), cmd=["/bin/sh"])
    import_layout(cd, root / "orig", "test.local/interop")
    cd.ctr(
        "image",
        "convert",
        "--estargz",
        "--oci",
        "--estargz-chunk-size",
        "200000",
        "test.local/interop:latest",
        "test.local/interop:ref-esgz",
        tool="ctr-remote",
    )
    export_layout(cd, "test.local/interop:ref-esgz", root / "ref")
    cd.ctr(
        "image",
        "convert",
        "--zstdchunked",
        "--oci",
        "--estargz-chunk-size",
        "200000",
        "test.local/interop:latest",
        "test.local/interop:ref-zstd",
        tool="ctr-remote",
    )
    export_layout(cd, "test.local/interop:ref-zstd", root / "ref-zstd")
    assert (
        main(
            ["convert", "--oci", "--chunk-size", "200000", f"oci:{root / 'orig'}:latest", f"oci:{root / 'ours'}:latest"]
        )
        == 0
    )
    # ctr mounts the original image with its own overlayfs snapshotter: the ground truth.
    mnt = root / "mnt"
    mnt.mkdir()
    cd.ctr("images", "mount", "test.local/interop:latest", str(mnt))
    truth = root / "truth"
    subprocess.run(["cp", "-a", f"{mnt}/.", str(truth)], check=True)
    cd.ctr("images", "unmount", str(mnt))
    assert built.layer_tars
    return {
        "orig": root / "orig",
        "ref": root / "ref",
        "ours": root / "ours",
        "truth": truth,
        "ref-zstd": root / "ref-zstd",
    }


def test_reference_conversion_checks_and_unpacks_identically(images: dict[str, Path], tmp_path: Path) -> None:
    ref = f"oci:{images['ref']}"
    assert main(["check", "--full", ref]) == 0
    assert main(["unpack", ref, str(tmp_path / "out")]) == 0
    assert snapshot_tree(tmp_path / "out") == snapshot_tree(images["truth"])


def test_our_conversion_unpacks_identically(images: dict[str, Path], tmp_path: Path) -> None:
    assert main(["check", "--full", f"oci:{images['ours']}:latest"]) == 0
    assert main(["unpack", f"oci:{images['ours']}:latest", str(tmp_path / "out")]) == 0
    assert snapshot_tree(tmp_path / "out") == snapshot_tree(images["truth"])


def _toc_entries(blob: bytes) -> list[dict[str, object]]:
    footer = parse_footer(blob[-51:], len(blob))
    toc = json.loads(read_toc_member(BytesSource(blob), footer.toc_offset, len(blob) - footer.size, 1 << 26))
    return [{k: v for k, v in e.items() if k != "offset"} for e in toc["entries"]]


def test_toc_entries_equal_the_reference(images: dict[str, Path]) -> None:
    ref = OCILayout(images["ref"])
    rd = ref.resolve()
    rm = Manifest.parse(ref.fetch(rd), rd.media_type)
    orig = OCILayout(images["orig"])
    od = orig.resolve()
    om = Manifest.parse(orig.fetch(od), od.media_type)
    for ref_layer, orig_layer in zip(rm.layers, om.layers, strict=True):
        ref_blob = ref.blob_path(ref_layer.digest).read_bytes()
        out = io.BytesIO()
        with orig.open_blob(orig_layer) as f:
            res = build_estargz(f, out, chunk_size=200000)
        assert _toc_entries(out.getvalue()) == _toc_entries(ref_blob)
        assert res.uncompressed_size == int(ref_layer.annotations[mt.ANNOTATION_UNCOMPRESSED_SIZE])


def test_containerd_runs_our_conversion_with_overlayfs(images: dict[str, Path], cd: Containerd) -> None:
    import_layout(cd, images["ours"], "test.local/ours")
    out = cd.ctr(
        "run",
        "--rm",
        "test.local/ours:latest",
        "interop-run",
        "/bin/sh",
        "-c",
        "md5sum /data/big.bin /data/hello.txt /data/opq/upper; cat /data/added.txt; "
        "ls /data/opq; test -e /data/gone || echo gone-ok",
    ).stdout
    assert hashlib.md5(BIG).hexdigest() in out
    assert hashlib.md5(b"hello\n").hexdigest() in out
    assert "third layer" in out and "gone-ok" in out
    assert "lower" not in out


def test_reference_zstdchunked_checks_and_unpacks_identically(images: dict[str, Path], tmp_path: Path) -> None:
    ref = f"oci:{images['ref-zstd']}"
    assert main(["check", "--full", ref]) == 0
    assert main(["unpack", ref, str(tmp_path / "out")]) == 0
    assert snapshot_tree(tmp_path / "out") == snapshot_tree(images["truth"])


def test_our_zstdchunked_runs_in_containerd(images: dict[str, Path], cd: Containerd, tmp_path: Path) -> None:
    assert (
        main(["convert", "--zstdchunked", "--oci", f"oci:{images['orig']}:latest", f"oci:{tmp_path / 'z'}:latest"]) == 0
    )
    assert main(["check", "--full", f"oci:{tmp_path / 'z'}:latest"]) == 0
    import_layout(cd, tmp_path / "z", "test.local/oursz")
    out = cd.ctr("run", "--rm", "test.local/oursz:latest", "interop-zstd", "/bin/md5sum", "/data/big.bin").stdout
    assert hashlib.md5(BIG).hexdigest() in out
