"""Progress on a terminal: upload bars advance with the bytes sent and end at the layer's
size; ``unpack`` shows the files and bytes it has written."""

from __future__ import annotations

import os
import random
import re
import select
import subprocess
import sys
from pathlib import Path

from tests.support.images import Entry, write_image
from tests.support.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
BIG = random.Random(4).randbytes(3 << 20)  # incompressible: the pushed layer is ~3.1 MB


def on_a_terminal(args: list[str]) -> tuple[int, str]:
    """Run ``lazypull ARGS`` with stderr on a pseudo-terminal; (exit code, what it showed)."""
    master, slave = os.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160", "TERM": "xterm"}
    cmd = [sys.executable, "-m", "lazypull.cli.main", *args]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 120)
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            out += data
    finally:
        os.close(master)
        code = proc.wait(60)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode(errors="replace"))  # colours, cursor moves
    return code, text


def last_state(text: str, word: str) -> str:
    """The last drawing of the progress row containing *word*."""
    rows = [r for r in re.split(r"[\r\n]", text) if word in r]
    assert rows, text
    return rows[-1]


def test_upload_bar_ends_at_the_layer_size(registry: Registry, tmp_path: Path) -> None:
    write_image(tmp_path / "src", [[Entry("big", data=BIG)]])
    code, text = on_a_terminal(["convert", "--plain-http", f"oci:{tmp_path / 'src'}:latest", f"{registry.host}/a/b:v1"])
    assert code == 0, text
    push = last_state(text, "push")
    done, total = re.search(r"([\d.]+)/([\d.]+) MB", push).groups()  # type: ignore[union-attr]
    assert done == total and float(total) > 3, push
    assert "?" not in push, push


def test_unpack_shows_files_and_bytes_on_a_terminal(tmp_path: Path) -> None:
    layers = [[Entry(f"f{i}", data=b"x" * 1000) for i in range(20)], [Entry("big", data=BIG)]]
    write_image(tmp_path / "src", layers)
    code, text = on_a_terminal(["unpack", f"oci:{tmp_path / 'src'}:latest", str(tmp_path / "rootfs")])
    assert code == 0, text
    row = last_state(text, " files, ")
    assert "21 files" in row and "3.2 MB" in row and "2/2 layers" in row, row
    assert (tmp_path / "rootfs" / "big").read_bytes() == BIG


def test_unpack_without_a_terminal_prints_only_its_summary(tmp_path: Path) -> None:
    write_image(tmp_path / "src", [[Entry("a", data=b"a")]])
    res = subprocess.run(
        [sys.executable, "-m", "lazypull.cli.main", "unpack", f"oci:{tmp_path / 'src'}:latest", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert res.stdout == f"unpacked 1 layers into {tmp_path / 'r'}\n"
