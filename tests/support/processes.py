"""Finding the layer server processes a test started (to assert none is left behind)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def layer_servers(root: Path, module: bytes = b"lazypull.service.fsd") -> list[int]:
    """Live (not zombie) processes of *module* (the layer server's, or its fd holder's) with
    *root* in their command line."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            zombie = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            continue
        if module in cmd and not zombie and any(str(root).encode() in c for c in cmd):
            out.append(int(pid))
    return out


def kill_layer_servers(root: Path) -> None:
    """kill -9 the fd holders of *root* (which would start the server again), then its servers."""
    for mod in (b"lazypull.service.fdholder", b"lazypull.service.fsd"):
        for pid in layer_servers(root, mod):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
