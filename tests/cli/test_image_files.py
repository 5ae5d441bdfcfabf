"""``lazypull ls``, ``cat`` and ``cp`` on registry images (with auth) and layouts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.convert.copy import copy_image
from lazypull.oci.layout import OCILayout
from lazypull.registry.options import RegistryOptions
from lazypull.registry.stores import open_store
from tests.imagefs.helpers import BIG, build
from tests.support.registry import Registry, start_registry

pytestmark = pytest.mark.filterwarnings("ignore::lazypull.imagefs.StreamedLayerWarning")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def layout(tmp_path: Path) -> str:
    return build(tmp_path, "estargz")


def cli(*argv: str) -> int:
    return main([*argv])


def test_ls(layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert cli("ls", *cache, layout, "etc") == 0
    assert capsys.readouterr().out.split() == ["hosts", "hosts.lnk", "os-release", "passwd", "sym"]
    assert cli("ls", "-l", *cache, layout, "/") == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("lrwxrwxrwx") and line.endswith("abs -> /etc/hosts") for line in lines)
    assert any(line.startswith("drwx------") and line.endswith(" opt") for line in lines)
    assert cli("ls", "-R", "--stats", *cache, layout, "var") == 0
    out = capsys.readouterr()
    assert out.out.split() == ["/var/cache", "/var/cache/b"]
    assert "bytes" in out.err and "layers opened" in out.err
    assert cli("ls", *cache, layout, "etc/passwd") == 0
    assert capsys.readouterr().out.strip() == "etc/passwd"


def test_cat(layout: str, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert cli("cat", *cache, layout, "etc/hosts", "/escape") == 0
    assert capsysbinary.readouterr().out == b"127.0.0.1 localhost\nroot:x:0:0:root:/root:/bin/sh\n"
    assert cli("cat", *cache, layout, "data/big.bin") == 0
    assert capsysbinary.readouterr().out == BIG


def test_errors_are_one_line(layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    for argv in (["cat", layout, "etc/missing"], ["cat", layout, "etc"], ["ls", layout, "loop1"]):
        assert cli(argv[0], *cache, *argv[1:]) == 1
        err = capsys.readouterr().err
        assert err.startswith("lazypull: error: ") and err.count("\n") == 1, err
    assert cli("cp", *cache, layout, "etc", str(tmp_path / "x")) == 1
    assert "use -r" in capsys.readouterr().err


def test_cp_file_and_tree(layout: str, tmp_path: Path) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "out"
    out.mkdir()
    assert cli("cp", *cache, layout, "data/big.bin", str(out)) == 0
    assert (out / "big.bin").read_bytes() == BIG and (out / "big.bin").stat().st_mode & 0o777 == 0o600
    assert cli("cp", *cache, layout, "etc/sym", str(out / "h")) == 0
    assert (out / "h").read_bytes() == b"127.0.0.1 localhost\n"
    assert cli("cp", "-r", *cache, layout, "/updir", str(out)) == 0  # a symlink to /etc: copied as etc/
    assert sorted(os.listdir(out / "etc")) == ["hosts", "hosts.lnk", "os-release", "passwd", "sym"]
    assert os.readlink(out / "etc" / "sym") == "hosts"
    assert (out / "etc" / "hosts").stat().st_mode & 0o777 == 0o640
    assert cli("cp", "-r", *cache, layout, "/", str(out / "root")) == 0
    assert (out / "root" / "var" / "cache" / "b").read_bytes() == b"upper b"
    assert not (out / "root" / "etc" / "old").exists()


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[Registry]:
    reg = start_registry(tmp_path / "reg", users={"bob": "pa55-word"})
    try:
        yield reg
    finally:
        reg.stop()


def test_registry_flags_and_credentials(auth_registry: Registry, layout: str, tmp_path: Path) -> None:
    target = f"{auth_registry.host}/cli/app:v1"
    opts = RegistryOptions(plain_http=True, user="bob:pa55-word")
    copy_image(OCILayout.from_ref(layout), open_store(target, opts, for_push=True), tag="v1")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "lazypull.cli.main", "cat", "--plain-http", "--cache-dir", str(tmp_path / "c")]
    denied = subprocess.run([*base, target, "etc/hosts"], capture_output=True, text=True, env=env)
    assert denied.returncode == 1 and denied.stderr.startswith("lazypull: error:")
    ok = subprocess.run(
        [*base, target, "etc/hosts"], capture_output=True, text=True, env={**env, "LAZYPULL_USER": "bob:pa55-word"}
    )
    assert ok.returncode == 0 and ok.stdout == "127.0.0.1 localhost\n"
    wrong = subprocess.run([*base, "--user", "bob:nope", target, "etc/hosts"], capture_output=True, text=True, env=env)
    assert wrong.returncode == 1 and "nope" not in wrong.stderr


def test_streamed_layer_warning_is_one_line(tmp_path: Path) -> None:
    ref = build(tmp_path, "gzip")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "lazypull.cli.main", "cat", "--cache-dir", str(tmp_path / "c"), ref, "etc/hosts"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 0 and res.stdout == "127.0.0.1 localhost\n"
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lazypull: warning: layer sha256:")
    assert "no index for lazy reads" in lines[0]


def test_a_reader_that_stops_early_ends_cat_quietly(layout: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "lazypull.cli.main", "cat", "--cache-dir", str(tmp_path / "c"), layout, "data/big.bin"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10) == BIG[:10]
    proc.stdout.close()  # like `| head -c 10`
    assert proc.wait(60) == 0
    assert proc.stderr.read() == b""
