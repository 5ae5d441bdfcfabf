"""The credentials file the store reads: containers-auth.json(5)'s order, Docker's last."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazypull.store.authfiles import auth_file, auth_file_candidates


def test_the_first_existing_containers_auth_file_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    runtime = tmp_path / "run" / "containers" / "auth.json"
    assert auth_file_candidates()[:2] == [runtime, Path("/etc/containers/auth.json")]
    if not Path("/etc/containers/auth.json").exists():
        assert auth_file() is None  # the registry client then reads the Docker config
    runtime.parent.mkdir(parents=True)
    runtime.write_text('{"auths": {}}')
    assert auth_file() == runtime
    explicit = tmp_path / "explicit.json"
    explicit.write_text('{"auths": {}}')
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(explicit))
    assert auth_file() == explicit
