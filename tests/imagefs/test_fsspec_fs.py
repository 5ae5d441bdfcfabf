"""``lazypull://`` through fsspec (and pandas / pyarrow) against a real registry and layouts."""

from __future__ import annotations

import io
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from hashlib import md5
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.tests.abstract import AbstractFixtures
from fsspec.tests.abstract.get import AbstractGetTests

from lazypull.convert.copy import copy_image
from lazypull.errors import ImageFileNotFoundError, ImageReadOnlyError, LazypullError
from lazypull.fsspec_fs import LazypullFileSystem, split_path
from lazypull.oci.layout import OCILayout
from lazypull.registry.options import RegistryOptions
from lazypull.registry.stores import open_store
from tests.imagefs.helpers import BIG, build
from tests.support.images import Entry
from tests.support.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
CSV = b"name,count\nalpha,1\nbeta,2\ngamma,3\n"


@pytest.fixture(autouse=True)
def lazypull_protocol() -> None:
    # The package's entry point registers the protocol once installed (tested below in a
    # fresh interpreter); the editable install in use may predate it.
    fsspec.register_implementation("lazypull", LazypullFileSystem, clobber=True)


def test_split_path() -> None:
    assert split_path("localhost:5000/app:v1/etc/os-release") == ("localhost:5000/app:v1", "etc/os-release")
    assert split_path("localhost:5000/team/app:v1") == ("localhost:5000/team/app:v1", "")
    assert split_path("registry.example/a/b@sha256:" + "a" * 64 + "/x/y") == (
        "registry.example/a/b@sha256:" + "a" * 64,
        "x/y",
    )
    assert split_path("docker.io/library/debian:12/etc/debian_version")[0] == "docker.io/library/debian:12"
    assert split_path("oci:/srv/images/app:v1/etc/hosts") == ("oci:/srv/images/app:v1", "etc/hosts")
    assert split_path("oci:./app:v1/") == ("oci:./app:v1", "")
    with pytest.raises(LazypullError, match="end the reference with its tag or digest"):
        split_path("localhost:5000/app/etc/hosts")


@pytest.fixture
def pushed(registry: Registry, tmp_path: Path) -> str:
    layers = [
        [
            Entry("etc", "dir", mode=0o755),
            Entry("etc/os-release", data=b'PRETTY_NAME="Test"\n'),
            Entry("srv/table.csv", data=CSV),
            Entry("srv/big.bin", data=BIG),
            Entry("srv/link.csv", "symlink", link="/srv/table.csv"),
        ]
    ]
    ref = build(tmp_path, "estargz", layers)
    target = f"{registry.host}/api/app:v1"
    copy_image(OCILayout.from_ref(ref), open_store(target, RegistryOptions(plain_http=True), for_push=True), tag="v1")
    return target


def test_fsspec_open_a_file_in_a_registry_image(pushed: str, tmp_path: Path) -> None:
    opts = {"plain_http": True, "cache_dir": str(tmp_path / "cache")}
    with fsspec.open(f"lazypull://{pushed}/etc/os-release", **opts) as f:
        assert f.read() == b'PRETTY_NAME="Test"\n'
    with fsspec.open(f"lazypull://{pushed}/etc/os-release", "rt", **opts) as f:
        assert f.read() == 'PRETTY_NAME="Test"\n'
    fs = fsspec.filesystem("lazypull", **opts)
    srv = [f"{pushed}/srv/{n}" for n in ("big.bin", "link.csv", "table.csv")]
    assert fs.ls(f"{pushed}/srv", detail=False) == srv
    info = fs.info(f"{pushed}/srv/link.csv")
    assert info["type"] == "file" and info["size"] == len(CSV) and info["islink"]
    assert info["destination"] == "/srv/table.csv"
    assert fs.info(pushed)["type"] == "directory"
    assert fs.cat_file(f"{pushed}/srv/big.bin", start=10, end=20) == BIG[10:20]
    assert fs.cat_file(f"{pushed}/srv/big.bin", start=-5) == BIG[-5:]
    assert fs.cat(f"lazypull://{pushed}/srv/table.csv") == CSV
    assert sorted(fs.find(pushed)) == [
        f"{pushed}/etc/os-release",
        f"{pushed}/srv/big.bin",
        f"{pushed}/srv/link.csv",
        f"{pushed}/srv/table.csv",
    ]
    assert fs.glob(f"{pushed}/srv/*.csv") == [f"{pushed}/srv/link.csv", f"{pushed}/srv/table.csv"]
    assert fs.exists(f"{pushed}/etc") and not fs.exists(f"{pushed}/nope")
    assert fs.ukey(f"{pushed}/srv/big.bin").startswith("sha256:")
    with pytest.raises(FileNotFoundError):
        fs.info(f"{pushed}/nope")
    with pytest.raises(ImageReadOnlyError), fs.open(f"{pushed}/etc/new", "wb") as f:
        f.write(b"x")
    with pytest.raises(ImageReadOnlyError):
        fs.rm(f"{pushed}/etc/os-release")


def test_pandas_reads_a_csv_inside_an_image(pushed: str, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    opts = {"plain_http": True, "cache_dir": str(tmp_path / "cache")}
    df = pd.read_csv(f"lazypull://{pushed}/srv/table.csv", storage_options=opts)
    assert list(df["name"]) == ["alpha", "beta", "gamma"] and df["count"].sum() == 6


def test_pyarrow_reads_parquet_inside_an_oci_layout(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": list(range(1000)), "y": [str(i) for i in range(1000)]}), buf)
    ref = build(tmp_path, "zstdchunked", [[Entry("data/t.parquet", data=buf.getvalue())]])
    opts = {"cache_dir": str(tmp_path / "cache")}
    with fsspec.open(f"lazypull://{ref}/data/t.parquet", **opts) as f:
        table = pq.read_table(f)
    assert table.num_rows == 1000 and table.column("x").to_pylist()[-1] == 999


def test_xarray_opens_netcdf_inside_an_image(tmp_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    pytest.importorskip("scipy")
    import numpy as np

    nc = bytes(xr.Dataset({"t": ("x", np.arange(100.0))}).to_netcdf(engine="scipy"))
    ref = build(tmp_path, "estargz", [[Entry("data/t.nc", data=nc)]])
    with fsspec.open(f"lazypull://{ref}/data/t.nc", cache_dir=str(tmp_path / "cache")) as f:
        ds = xr.open_dataset(f, engine="scipy")
        assert float(ds["t"].sum()) == 4950.0


def test_find_walks_an_image_with_dangling_and_looping_symlinks(tmp_path: Path) -> None:
    fs = LazypullFileSystem(cache_dir=str(tmp_path / "cache"), skip_instance_cache=True)
    ref = build(tmp_path, "estargz")  # tests.imagefs.helpers.overlay_layers
    found = fs.find(ref, withdirs=True, detail=True)
    assert found[f"{ref}/loop1"]["type"] == "other" and found[f"{ref}/dangling"]["type"] == "other"
    assert found[f"{ref}/updir"]["type"] == "other" and found[f"{ref}/updir"]["islink"]  # not descended
    assert f"{ref}/updir/hosts" not in found and fs.isdir(f"{ref}/updir")
    assert found[f"{ref}/abs"]["type"] == "file" and found[f"{ref}/abs"]["size"] == 20
    assert found[f"{ref}/var/cache/b"]["size"] == len(b"upper b")
    assert f"{ref}/etc/old" not in found and f"{ref}/var/cache/a" not in found
    assert fs.cat_file(f"{ref}/updir/hosts") == b"127.0.0.1 localhost\n"


def test_wrong_credentials_and_missing_paths_are_lazypull_errors(pushed: str, tmp_path: Path) -> None:
    fs = LazypullFileSystem(plain_http=True, cache_dir=str(tmp_path / "cache"), skip_instance_cache=True)
    with pytest.raises(ImageFileNotFoundError):
        fs.cat_file(f"{pushed}/srv/missing")
    with pytest.raises(LazypullError):
        fs.ls(pushed.replace(":v1", ":v2"))


def test_entry_point_registers_the_protocol(tmp_path: Path) -> None:
    """What ``pip install`` would write from pyproject.toml, seen by a fresh fsspec import."""
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["fsspec.specs"]
    dist = tmp_path / "site" / "lazypull_probe-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lazypull-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[fsspec.specs]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    code = (
        "import fsspec, sys; cls = fsspec.get_filesystem_class('lazypull');print(cls.__module__ + ':' + cls.__name__)"
    )
    env = {"PYTHONPATH": f"{tmp_path / 'site'}:{ROOT}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "lazypull.fsspec_fs:LazypullFileSystem"


# -- fsspec's own test suite: the parts that apply to a read-only filesystem ---------------------------


def _scenarios() -> list[Entry]:
    """The trees fsspec's fixtures would create, built into an image instead."""
    out = [Entry(f"s0/source/{p}", data=b"") for p in ("file1", "file2", "subdir/subfile1", "subdir/subfile2")]
    out.append(Entry("s0/source/subdir/nesteddir/nestedfile", data=b""))
    out += [Entry(f"glob/source/{p}", data=b"") for p in ("file1", "file2")]
    for i in range(2):
        for p in ("subfile1", "subfile2", "nesteddir/nestedfile"):
            out.append(Entry(f"glob/source/subdir{i}/{p}", data=b""))
    out += [Entry("prefix/source/subdir.txt", data=b""), Entry("prefix/source/subdir/subfile.txt", data=b"")]
    out += [Entry(f"hashed/source/{md5(str(i).encode()).hexdigest()}.txt", data=str(i).encode()) for i in range(10)]
    out += [Entry("src/file", data=b"")]
    return out


class _Prebuilt(LazypullFileSystem):
    """The suite creates its source trees with mkdir/touch; the image already holds them."""

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        assert self.isdir(path), path

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        assert self.isfile(path), path


class TestFsspecGet(AbstractGetTests, AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture(scope="class")
    def image_ref(self, tmp_path_factory: pytest.TempPathFactory) -> str:
        return build(tmp_path_factory.mktemp("fsspec-image"), "estargz", [_scenarios()])

    @pytest.fixture
    def fs(self, image_ref: str, tmp_path: Path) -> Iterator[LazypullFileSystem]:
        fs = _Prebuilt(cache_dir=str(tmp_path / "cache"), skip_instance_cache=True)
        yield fs
        fs.close()

    @pytest.fixture
    def fs_path(self, image_ref: str) -> str:
        return image_ref

    @pytest.fixture
    def fs_join(self) -> Any:
        return lambda *parts: "/".join(p.rstrip("/") for p in parts)

    @pytest.fixture
    def fs_bulk_operations_scenario_0(self, fs_path: str) -> str:
        return f"{fs_path}/s0/source"

    @pytest.fixture
    def fs_glob_edge_cases_files(self, fs_path: str) -> str:
        return f"{fs_path}/glob/source"

    @pytest.fixture
    def fs_dir_and_file_with_same_name_prefix(self, fs_path: str) -> str:
        return f"{fs_path}/prefix/source"

    @pytest.fixture
    def fs_10_files_with_hashed_names(self, fs_path: str) -> str:
        return f"{fs_path}/hashed/source"


def test_find_does_not_loop_on_a_link_to_its_own_directory(tmp_path: Path) -> None:
    layers = [[Entry("usr/bin/tool", data=b"x"), Entry("usr/bin/X11", "symlink", link=".")]]
    ref = build(tmp_path, "estargz", layers)
    fs = LazypullFileSystem(cache_dir=str(tmp_path / "cache"), skip_instance_cache=True)
    assert fs.find(ref) == [f"{ref}/usr/bin/X11", f"{ref}/usr/bin/tool"]
    assert fs.ls(f"{ref}/usr/bin/X11/X11/X11", detail=False) == [
        f"{ref}/usr/bin/X11/X11/X11/X11",
        f"{ref}/usr/bin/X11/X11/X11/tool",
    ]
