"""The kubelet's CredentialProviderConfig, read and validated as the kubelet does, and the
daemon's [credential_providers] keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lazypull.errors import ConfigError
from lazypull.service.config import DaemonConfig
from lazypull.service.cri.credproviderconfig import load_config, parse_config, parse_duration
from tests.support.credplugin import Plugin, provider_config

YAML = """\
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: test-plugin
    matchImages:
      - "*.dkr.ecr.*.amazonaws.com"
      - "127.0.0.1:5000/team"
    defaultCacheDuration: "12h"
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args:
      - get-credentials
    env:
      - name: AWS_PROFILE
        value: node
"""


@pytest.fixture
def plugin(tmp_path: Path) -> Plugin:
    return Plugin(tmp_path / "bin", tmp_path / "state")


def test_yaml_config(tmp_path: Path, plugin: Plugin) -> None:
    (tmp_path / "c.yaml").write_text(YAML)
    [p] = load_config(tmp_path / "c.yaml", plugin.bin_dir)
    assert p.name == "test-plugin" and p.executable == plugin.bin_dir / "test-plugin"
    assert p.match_images == ("*.dkr.ecr.*.amazonaws.com", "127.0.0.1:5000/team")
    assert p.default_cache_sec == 12 * 3600
    assert p.api_version == "credentialprovider.kubelet.k8s.io/v1"
    assert p.args == ("get-credentials",) and p.env == (("AWS_PROFILE", "node"),)
    assert "node" not in repr(p)  # env values may be secrets


def test_json_and_older_api_versions(tmp_path: Path, plugin: Plugin) -> None:
    cfg = provider_config(plugin, ["*.io"])
    cfg["apiVersion"] = "kubelet.config.k8s.io/v1beta1"
    cfg["providers"][0]["apiVersion"] = "credentialprovider.kubelet.k8s.io/v1alpha1"
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    [p] = load_config(tmp_path / "c.json", plugin.bin_dir)
    assert p.api_version == "credentialprovider.kubelet.k8s.io/v1alpha1"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("0s", 0), ("12h", 43200), ("1m30s", 90), ("1.5h", 5400), ("500ms", 0.5), ("2h45m", 9900)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "-5m", "5 m", "1d", "m5", "1h-5m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def _mutate(plugin: Plugin, change: dict[str, Any] | None = None, drop: str = "") -> dict[str, Any]:
    cfg = provider_config(plugin, ["*.io"])
    cfg["providers"][0].update(change or {})
    cfg["providers"][0].pop(drop, None)
    return cfg


@pytest.mark.parametrize(
    ("change", "drop", "message"),
    [
        ({}, "matchImages", "matchImages must be a non-empty list"),
        ({"matchImages": []}, "", "matchImages must be a non-empty list"),
        ({"matchImages": ["reg[.io"]}, "", "matchImages: 'reg\\[.io': 'reg\\[': unterminated"),
        ({}, "defaultCacheDuration", "defaultCacheDuration is required"),
        ({"defaultCacheDuration": "-1m"}, "", "defaultCacheDuration: invalid duration"),
        ({"apiVersion": "credentialprovider.kubelet.k8s.io/v2"}, "", "apiVersion must be one of"),
        ({"name": "../bin/sh"}, "", "name must be a file name"),
        ({"name": "absent"}, "", "plugin .*/absent is missing or not executable"),
        ({"args": "get"}, "", "args must be a list of strings"),
        ({"env": [{"value": "x"}]}, "", "env entries need a name"),
        ({"tokenAttributes": {"serviceAccountTokenAudience": "a", "requireServiceAccount": True}}, "", "token"),
    ],
)
def test_invalid_providers_are_refused(plugin: Plugin, change: dict[str, Any], drop: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_mutate(plugin, change, drop), plugin.bin_dir)


def test_invalid_configs_are_refused(tmp_path: Path, plugin: Plugin) -> None:
    cfg = provider_config(plugin, ["*.io"])
    with pytest.raises(ConfigError, match="duplicate provider names: test-plugin"):
        parse_config({**cfg, "providers": cfg["providers"] * 2}, plugin.bin_dir)
    with pytest.raises(ConfigError, match="at least one provider"):
        parse_config({**cfg, "providers": []}, plugin.bin_dir)
    with pytest.raises(ConfigError, match="kind must be CredentialProviderConfig"):
        parse_config({**cfg, "kind": "KubeletConfiguration"}, plugin.bin_dir)
    with pytest.raises(ConfigError, match="apiVersion must be one of"):
        parse_config({**cfg, "apiVersion": "v1"}, plugin.bin_dir)
    (plugin.bin_dir / plugin.name).chmod(0o644)
    with pytest.raises(ConfigError, match="not executable"):
        parse_config(cfg, plugin.bin_dir)
    (tmp_path / "bad.yaml").write_text("providers: [\n")
    with pytest.raises(ConfigError, match="not valid YAML or JSON"):
        load_config(tmp_path / "bad.yaml", plugin.bin_dir)
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "absent.yaml", plugin.bin_dir)


def test_daemon_config_keys() -> None:
    cfg = DaemonConfig.from_mapping(
        {"credential_providers": {"config": "/etc/kubernetes/cp.yaml", "bin_dir": "/usr/libexec/kcp", "timeout_sec": 3}}
    )
    assert cfg.credential_provider_config == "/etc/kubernetes/cp.yaml"
    assert cfg.credential_provider_bin_dir == "/usr/libexec/kcp"
    assert cfg.credential_provider_timeout_sec == 3.0
    assert DaemonConfig.from_mapping({}).credential_provider_config == ""
    with pytest.raises(ConfigError, match="bin_dir is required"):
        DaemonConfig.from_mapping({"credential_providers": {"config": "/etc/kubernetes/cp.yaml"}})
    with pytest.raises(ConfigError, match="timeout_sec must be at least"):
        DaemonConfig.from_mapping({"credential_providers": {"timeout_sec": 0}})


def test_the_daemon_refuses_to_start_with_a_config_the_kubelet_would_refuse(
    tmp_path: Path, plugin: Plugin, capsys: pytest.CaptureFixture[str]
) -> None:
    from lazypull.service.main import main

    cfg = provider_config(plugin, ["*.io"])
    cfg["providers"][0]["name"] = "not-installed"
    (tmp_path / "cp.json").write_text(json.dumps(cfg))
    (tmp_path / "config.toml").write_text(
        f'[credential_providers]\nconfig = "{tmp_path / "cp.json"}"\nbin_dir = "{plugin.bin_dir}"\n'
    )
    args = [
        "--address",
        str(tmp_path / "sock"),
        "--root",
        str(tmp_path / "root"),
        "--config",
        str(tmp_path / "config.toml"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "provider 'not-installed': plugin" in err and "is missing or not executable" in err
    assert not (tmp_path / "sock").exists()
