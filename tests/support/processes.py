"""Finding the layer server processes a test started (to assert none is left behind)."""

from __future__ import annotations

import os
from pathlib import Path


def layer_servers(root: Path) -> list[int]:
    """Live (not zombie) ``lazypull.service.fsd`` processes with *root* in their command line."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            zombie = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            continue
        if b"lazypull.service.fsd" in cmd and not zombie and any(str(root).encode() in c for c in cmd):
            out.append(int(pid))
    return out
