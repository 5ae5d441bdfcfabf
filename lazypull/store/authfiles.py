"""Which credentials file the store reads: the one Podman and CRI-O write, else Docker's.

The containers-auth.json(5) format is Docker's ``config.json`` (``auths``, ``credHelpers``),
so the registry client's Docker-config reader takes either.
"""

from __future__ import annotations

import os
from pathlib import Path


def auth_file_candidates() -> list[Path]:
    """In containers-auth.json(5) order: ``$REGISTRY_AUTH_FILE``, the user's runtime file
    (``${XDG_RUNTIME_DIR}/containers/auth.json``; root's is ``/run/containers/0``), the
    system's ``/etc/containers/auth.json``; the Docker config comes last (the client's default)."""
    out = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        out.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        out.append(Path(runtime) / "containers" / "auth.json")
    elif os.getuid() == 0:
        out.append(Path("/run/containers/0/auth.json"))
    out.append(Path("/etc/containers/auth.json"))
    return out


def auth_file() -> Path | None:
    """The first containers auth file that exists; None: the Docker config is read."""
    return next((p for p in auth_file_candidates() if p.is_file()), None)
