"""The first mistakes a user makes, each answered with its cause and what to do: a dead
registry port, another tool's image names, mistyped config paths and levels (exit 2), an
unconverted image under ``check``."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.cli.main import main
from tests.support.images import Entry, write_image
from tests.support.net import free_port
from tests.support.registry import Registry

pytestmark = pytest.mark.filterwarnings("ignore::lazypull.imagefs.StreamedLayerWarning")


@pytest.fixture
def src(tmp_path: Path) -> str:
    write_image(tmp_path / "src", [[Entry("etc/hello", data=b"hello\n")], [Entry("data", data=b"x" * 100_000)]])
    return f"oci:{tmp_path / 'src'}:latest"


def err_of(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err


@pytest.mark.parametrize("command", ["convert", "copy"])
def test_dead_destination_port_fails_before_any_work_with_the_cause(
    command: str, src: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = f"127.0.0.1:{free_port()}/app/x:v1"  # nothing listens there
    t0 = time.monotonic()
    extra = ["--no-progress"] if command == "convert" else []
    assert main([command, "--plain-http", *extra, src, dst]) == 1
    assert time.monotonic() - t0 < 5
    err = err_of(capsys)
    assert "cannot reach the registry" in err and "connection refused" in err, err
    assert "MaxRetryError" not in err


def test_dead_source_port_names_the_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["copy", "--plain-http", f"127.0.0.1:{free_port()}/app/x:v1", f"oci:{tmp_path / 'o'}:x"]) == 1
    err = err_of(capsys)
    assert "connection refused" in err and "MaxRetryError" not in err, err


@pytest.mark.parametrize(
    ("ref", "hint"),
    [
        ("docker://alpine:3", "drop the scheme (alpine:3)"),
        ("http://localhost:5000/app:v1", "drop the scheme (localhost:5000/app:v1); --plain-http for a plain-HTTP"),
        ("https://localhost:5000/app:v1", "drop the scheme (localhost:5000/app:v1)"),
        ("./app", "use oci:./app[:TAG]"),
        ("/srv/images/app", "use oci:/srv/images/app[:TAG]"),
        ("./app.tar", "use docker-archive:./app.tar"),
        ("docker-daemon:alpine:3", "oci:DIR[:TAG], docker-archive:PATH[:REF]"),
    ],
)
def test_other_tools_image_names_get_a_hint(
    ref: str, hint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["copy", ref, f"oci:{tmp_path / 'o'}:x"]) == 1
    err = err_of(capsys)
    assert "is not an image reference" in err and hint in err, err
    assert "invalid registry host" not in err


@pytest.mark.parametrize("flag", ["--docker-config", "--registry-config"])
def test_missing_config_file_named_by_a_flag_is_an_error(
    flag: str, src: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope" / "config"
    assert main(["copy", flag, str(missing), src, f"oci:{tmp_path / 'o'}:x"]) == 2
    assert f"{flag} {missing}: no such file" in err_of(capsys)
    assert not (tmp_path / "o").exists()  # nothing was done


def test_unreadable_docker_config_exits_2(src: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{")
    assert main(["ls", "--plain-http", "--docker-config", str(bad), f"127.0.0.1:{free_port()}/a/b:1", "/"]) == 2
    assert "cannot read docker config" in err_of(capsys)


def test_unknown_log_level_is_a_usage_error(src: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--log-level", "verbose", "check", src])
    assert e.value.code == 2
    assert "unknown log level 'verbose'" in err_of(capsys)


def test_check_of_an_unconverted_image_says_it_is_not_lazily_pullable(
    src: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", src]) == 3
    out = capsys.readouterr()
    assert "not lazily pullable" in out.err and "lazypull convert" in out.err
    assert all(line.endswith("not lazy") for line in out.out.splitlines()), out.out
    assert main(["convert", "--no-progress", src, f"oci:{tmp_path / 'c'}:x"]) == 0
    capsys.readouterr()
    assert main(["check", f"oci:{tmp_path / 'c'}:x"]) == 0
    out = capsys.readouterr()
    assert "2/2 layers ok" in out.err and "not lazily" not in out.err


def test_check_counts_a_soci_indexed_image_as_lazy(
    registry: Registry, src: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = f"{registry.host}/app/soci:v1"
    assert main(["copy", "--plain-http", src, ref]) == 0
    assert main(["soci", "create", "--plain-http", "--min-layer-size", "0", ref]) == 0
    capsys.readouterr()
    assert main(["check", "--plain-http", ref]) == 0, capsys.readouterr()


def test_version_does_not_import_grpc() -> None:
    code = (
        "import sys; from lazypull.cli.main import main; rc = main(['--version']); "
        "print('grpc' in sys.modules, 'urllib3' in sys.modules, rc)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["lazypull", "0.1.0", "False", "False", "0"], res.stdout + res.stderr


def test_commands_other_than_the_daemon_do_not_import_grpc() -> None:
    code = "import sys; from lazypull.cli.main import build_parser; build_parser(); print('grpc' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "False", res.stdout + res.stderr


@contextlib.contextmanager
def _passable_by_others(*paths: Path) -> Iterator[None]:
    """Let another user reach the venv and the checkout for the test's length: a checkout in a
    0700 directory (``mktemp -d``, as CI clones) is otherwise closed to user nobody, and the
    command would fail at import instead of at the permission the test is about. Directories
    above them get the search bit only (no listing); the modes are put back after."""
    changed: dict[Path, int] = {}
    for top in paths:
        for p in [top, *top.parents]:
            mode = p.stat().st_mode & 0o7777
            if p not in changed and not mode & 0o001:
                changed[p] = mode
                p.chmod(mode | 0o001)
    try:
        yield
    finally:
        for p, mode in changed.items():
            p.chmod(mode)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="switches to user nobody (needs root)")
def test_mount_as_a_user_says_it_needs_root() -> None:
    with tempfile.TemporaryDirectory(prefix="lazypull-user-") as d:
        os.chmod(d, 0o755)
        write_image(Path(d) / "img", [[Entry("etc/hello", data=b"hello\n")]])
        for p in Path(d).rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        with _passable_by_others(Path(sys.prefix), Path(__file__).resolve().parents[2]):
            res = subprocess.run(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                 sys.executable, "-m", "lazypull.cli.main", "mount", f"oci:{d}/img:latest", f"{d}/mnt"],
                capture_output=True, text=True, timeout=60, cwd=d,
            )  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert "Permission denied: /run/lazypull" in res.stderr and "needs root" in res.stderr and "sudo" in res.stderr
