"""``ls``, ``cat``, ``cp`` and the Python API read an unconverted image lazily through its
SOCI index, as ``lazypull mount`` does: no whole-layer download, no streamed-layer warning."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest

from lazypull import open_image
from lazypull.cli.main import main
from tests.support.images import Entry, write_image
from tests.support.registry import Registry

BIG = random.Random(24).randbytes(3 << 20)  # incompressible: the layer is about as big


@pytest.fixture
def indexed(registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    layers = [[Entry("etc/hello", data=b"hello\n")], [Entry("big", data=BIG), Entry("small", data=b"tiny\n")]]
    write_image(tmp_path / "src", layers)
    ref = f"{registry.host}/app/soci:v1"
    assert main(["copy", "--plain-http", f"oci:{tmp_path / 'src'}:latest", ref]) == 0
    args = ["soci", "create", "--plain-http", "--span-size", "65536", "--min-layer-size", "0", ref]
    assert main(args) == 0
    capsys.readouterr()
    return ref


def test_cli_reads_through_the_soci_index(indexed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["ls", "--plain-http", *cache, indexed, "/"]) == 0
    out = capsys.readouterr()
    assert out.out.split() == ["big", "etc", "small"]
    assert "no index for lazy reads" not in out.err, out.err
    assert main(["cat", "--plain-http", "--stats", *cache, indexed, "/small"]) == 0
    out = capsys.readouterr()
    assert out.out == "tiny\n" and "no index for lazy reads" not in out.err, out.err
    fetched, total = (int(w) for w in out.err.split()[1:4:2])
    assert fetched < total / 4, out.err  # spans of one small file, not the 3 MB layer
    assert main(["cp", "--plain-http", *cache, indexed, "/big", str(tmp_path / "big")]) == 0
    assert (tmp_path / "big").read_bytes() == BIG


def test_api_reads_through_the_soci_index(indexed: str, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a StreamedLayerWarning fails the test
        with open_image(indexed, plain_http=True, cache_dir=tmp_path / "cache") as img:
            assert img.read_bytes("small") == b"tiny\n"
            st = img.stats()
            assert img.read_bytes("big") == BIG
    assert st.layers_opened == 1 and st.bytes_fetched < st.image_bytes / 4, st
