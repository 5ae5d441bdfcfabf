"""Index builds apart are background work: no more children at once than there are cores."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lazypull.fs import buildapart

LAYER = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + "0" * 64, "size": 1}


def test_no_more_builds_run_at_once_than_there_are_slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buildapart, "_slots", threading.BoundedSemaphore(2))
    running, most = [0], [0]
    lock = threading.Lock()

    def fake_run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.1)
        with lock:
            running[0] -= 1
        return subprocess.CompletedProcess(cmd, 0, b"", b"")

    monkeypatch.setattr(buildapart.subprocess, "run", fake_run)
    threads = [
        threading.Thread(target=buildapart.build_in_child, args=(tmp_path / "s", LAYER, tmp_path / f"i{n}", b"k"))
        for n in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most[0] == 2 and running[0] == 0
