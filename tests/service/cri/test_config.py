"""The reference daemon's [cri_keychain] keys."""

from __future__ import annotations

import logging

import pytest

from lazypull.service.config import DaemonConfig


def test_cri_keychain_keys(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert not DaemonConfig.from_mapping({}).enable_keychain
    cfg = DaemonConfig.from_mapping(
        {"cri_keychain": {"enable_keychain": True, "image_service_path": "/run/k3s/containerd/containerd.sock"}}
    )
    assert cfg.enable_keychain and cfg.image_service_path == "/run/k3s/containerd/containerd.sock"
    assert DaemonConfig.from_mapping({"cri_keychain": {"enable_keychain": True}}).image_service_path == (
        "/run/containerd/containerd.sock"
    )
    assert not caplog.records
    DaemonConfig.from_mapping({"cri_keychain": {"enable_keychian": True}})
    assert "unknown key cri_keychain.enable_keychian" in caplog.text


def test_cri_keychain_keys_are_typed() -> None:
    from lazypull.service.config import ConfigError

    with pytest.raises(ConfigError, match=r"cri_keychain\.enable_keychain must be a boolean"):
        DaemonConfig.from_mapping({"cri_keychain": {"enable_keychain": "true"}})
