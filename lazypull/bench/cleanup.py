"""Leftovers of a benchmark node: its layer servers, which outlive the daemon by design."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def kill_layer_servers(root: Path) -> None:
    """SIGTERM every layer server whose command line names *root*."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"lazypull.service.fsd" in cmd and str(root).encode() in cmd:
                try:
                    os.kill(int(pid), signal.SIGTERM)
                except ProcessLookupError:
                    pass
