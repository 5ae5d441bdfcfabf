"""``lazypull mount`` says which layer it downloads whole (no index for lazy reads) and
how big it is: the one part of a lazy mount that costs the layer's full size."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from lazypull.cli.main import main
from tests.support.images import Entry, write_image

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts (root)")


def test_mount_warns_of_a_layer_downloaded_whole(tmp_path: Path) -> None:
    img = write_image(tmp_path / "img", [[Entry("big", data=random.Random(3).randbytes(150_000))]])
    layer = img.manifest.layers[0]
    mnt, state = tmp_path / "mnt", tmp_path / "state"
    mnt.mkdir()
    args = ["--cache-dir", str(tmp_path / "cache"), "--state-dir", str(state), "--no-background-fetch"]
    cmd = [sys.executable, "-m", "lazypull.cli.main", "mount", "--daemon", *args, f"oci:{tmp_path / 'img'}:latest"]
    res = subprocess.run([*cmd, str(mnt)], capture_output=True, text=True, timeout=120)  # warnings as users see them
    try:
        assert res.returncode == 0, res.stderr
        assert (mnt / "big").stat().st_size == 150_000
    finally:
        assert main(["umount", "--state-dir", str(state), str(mnt)]) == 0
    lines = res.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("lazypull: warning: ")
    assert f"layer {layer.digest} ({layer.size / 1000:.1f} kB, " in lines[0]
    assert "downloading and unpacking all of it" in lines[0]
