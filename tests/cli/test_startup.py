"""A command imports what it uses: ``lazypull ls --help`` loads no image reader, and a
command on a local layout loads no HTTP stack (start-up was ~0.6 s, every module at once)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.images import Entry, write_image


def modules_after(argv: list[str]) -> set[str]:
    code = (
        "import sys; from lazypull.cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)"
    )
    res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    return set(res.stderr.split())


def test_help_of_one_command_loads_only_that_command() -> None:
    loaded = modules_after(["ls", "--help"])
    assert "lazypull.cli.ls" in loaded
    for heavy in ("lazypull.cli.mount", "lazypull.cli.convert", "lazypull.imagefs", "urllib3", "rich"):
        assert heavy not in loaded, heavy


def test_ls_of_a_layout_loads_no_http_stack(tmp_path: Path) -> None:
    write_image(tmp_path / "img", [[Entry("etc/hello", data=b"hello\n")]])
    loaded = modules_after(["ls", f"oci:{tmp_path / 'img'}:latest", "/"])
    assert "lazypull.imagefs" in loaded
    assert "urllib3" not in loaded and "lazypull.cli.convert" not in loaded


def test_umount_and_options_before_the_command_find_their_module() -> None:
    assert "lazypull.cli.mount" in modules_after(["--log-level", "debug", "umount", "--help"])
    loaded = modules_after(["--help"])  # the command list: every command
    assert {"lazypull.cli.ls", "lazypull.cli.mount", "lazypull.cli.convert"} <= loaded
