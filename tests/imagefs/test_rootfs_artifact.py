"""``lazypull mount`` of a ModelPack artifact: its files read-only at their paths, an
indexed raw layer served lazily by the layer server, verified chunk by chunk."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.imagefs.rootfs import mount_stats
from tests.support.artifacts import WEIGHT_CONFIG_RAW, modelpack_file, push_artifact, tar_of
from tests.support.processes import layer_servers
from tests.support.registry import Registry

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::lazypull.imagefs.StreamedLayerWarning")]
WEIGHTS = os.urandom(24 << 20)
CHUNK = 64 << 10


def test_mount_artifact_serves_indexed_weights_lazily(registry: Registry, tmp_path: Path) -> None:
    ref = push_artifact(
        registry.host,
        "models/mnt",
        [
            modelpack_file("docs", tar_of({"docs/README.md": b"# m\n"}), "application/vnd.cncf.model.doc.v1.tar"),
            modelpack_file("config.json", b'{"a": 1}', WEIGHT_CONFIG_RAW),
            modelpack_file("weights/model.bin", WEIGHTS),
        ],
    )
    assert main(["index", "create", "--plain-http", "--chunk-size", str(CHUNK), ref]) == 0
    mnt, state = tmp_path / "mnt", tmp_path / "state"
    common = ["--state-dir", str(state)]
    args = ["mount", "--daemon", "--plain-http", "--no-prefetch", "--no-background-fetch", *common]
    assert main([*args, "--cache-dir", str(tmp_path / "cache"), ref, str(mnt)]) == 0
    try:
        assert sorted(os.listdir(mnt)) == ["config.json", "docs", "weights"]
        assert (mnt / "config.json").read_bytes() == b'{"a": 1}'
        assert (mnt / "docs/README.md").read_bytes() == b"# m\n"
        with open(mnt / "weights/model.bin", "rb") as f:
            f.seek(1 << 20)
            assert f.read(100) == WEIGHTS[1 << 20 : (1 << 20) + 100]
        rows = mount_stats(mnt, state)
        assert [r["lazy"] for r in rows] == [False, True, True]  # the tar layer is unpacked; raw ones indexed
        assert int(str(rows[2]["fetched_bytes"])) <= 10 << 20  # what was read, and the fetcher's read-ahead
        assert (mnt / "weights/model.bin").read_bytes() == WEIGHTS
        with pytest.raises(OSError):
            (mnt / "new").write_bytes(b"x")  # read-only
    finally:
        assert main(["umount", *common, str(mnt)]) == 0
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    assert not layer_servers(tmp_path)
