"""The DaemonSet's containerd step (lazypull.service.containerdconf) against configs a node
really has, loaded by the real containerd binary: `containerd config default`'s output, a
customised config with an import of its own, and configs it must leave alone."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lazypull.service.containerdconf import ADDRESS, CRI, main

ROOT = Path(__file__).resolve().parents[2]
CONTAINERD = shutil.which("containerd")
pytestmark = pytest.mark.skipif(CONTAINERD is None, reason="containerd (scripts/setup.sh installs it) not found")

CUSTOM = """\
# A node's own config: comments, imports of its own, CRI settings that must survive.
version = 2
imports = ["{etc}/containerd/site.toml"]  # the site's defaults
root = "/var/lib/containerd"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.example/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
    endpoint = ["https://mirror.example"]
"""
SITE = """\
version = 2
oom_score = -999
[plugins."io.containerd.internal.v1.opt"]
  path = "/opt/site-containerd"
"""


def dump(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONTAINERD), "--config", str(config), "config", "dump"], capture_output=True, text=True, timeout=60
    )


def run_step(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The init step as the DaemonSet runs it, as a process (containerd on this machine's paths)."""
    drop_in = config.parent / "conf.d" / "lazypull.toml"
    cmd = [sys.executable, "-m", "lazypull.service.containerdconf", "--config", str(config), "--drop-in", str(drop_in)]
    return subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=120)


def loaded(config: Path) -> dict[str, object]:
    res = dump(config)
    assert res.returncode == 0, res.stderr
    return tomllib.loads(res.stdout)


def assert_lazypull(cfg: dict[str, object]) -> None:
    assert cfg["proxy_plugins"]["lazypull"] == {"type": "snapshot", "address": ADDRESS}  # type: ignore[index]
    ctd = cfg["plugins"][CRI]["containerd"]  # type: ignore[index]
    assert ctd["snapshotter"] == "lazypull" and ctd["disable_snapshot_annotations"] is False


def test_old_append_breaks_containerd_on_its_default_config(tmp_path: Path) -> None:
    # What the DaemonSet did before: `cat deploy/containerd-config.toml >> config.toml`.
    cfg = tmp_path / "config.toml"
    default = subprocess.run([str(CONTAINERD), "config", "default"], capture_output=True, text=True, check=True)
    cfg.write_text(default.stdout + (ROOT / "deploy" / "containerd-config.toml").read_text())
    res = dump(cfg)
    assert res.returncode != 0 and "duplicated tables" in res.stderr


def test_default_config_gets_the_drop_in_and_containerd_loads_it(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    default = subprocess.run([str(CONTAINERD), "config", "default"], capture_output=True, text=True, check=True)
    cfg.write_text(default.stdout)
    before = loaded(cfg)
    marker = tmp_path / "restarted"
    res = run_step(cfg, "--restart", f"touch {marker}")
    assert res.returncode == 0, res.stderr
    assert marker.exists()  # restarted once, after the files were loaded
    after = loaded(cfg)
    assert_lazypull(after)
    assert str(cfg.parent / "conf.d" / "lazypull.toml") in after["imports"]  # type: ignore[operator]
    # Nothing else moved: containerd's view is the old one plus lazypull's keys.
    for key in ("root", "state", "grpc", "oom_score"):
        assert after[key] == before[key]
    assert after["plugins"][CRI]["sandbox_image"] == before["plugins"][CRI]["sandbox_image"]  # type: ignore[index]
    assert (tmp_path / "config.toml.lazypull-backup").read_text() == default.stdout
    # The only edit to the node's file is its imports line.
    drop_in = cfg.parent / "conf.d" / "lazypull.toml"
    assert cfg.read_text() == default.stdout.replace("imports = []\n", f'imports = ["{drop_in}"]\n', 1)

    # Run again (pod restart): nothing to do, no restart.
    marker.unlink()
    res = run_step(cfg, "--restart", f"touch {marker}")
    assert res.returncode == 0 and "already has the lazypull snapshotter" in res.stdout, res.stderr
    assert not marker.exists()


def test_customised_config_keeps_its_settings(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "containerd").mkdir(parents=True)
    cfg = etc / "containerd" / "config.toml"
    cfg.write_text(CUSTOM.format(etc=etc))
    (etc / "containerd" / "site.toml").write_text(SITE)
    before = loaded(cfg)
    assert before["plugins"][CRI]["containerd"]["snapshotter"] == "overlayfs"  # type: ignore[index]

    res = run_step(cfg, "--restart", "true")
    assert res.returncode == 0, res.stderr
    after = loaded(cfg)
    assert_lazypull(after)
    cri = after["plugins"][CRI]  # type: ignore[index]
    assert cri["sandbox_image"] == "registry.example/pause:3.9"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
    assert cri["registry"]["mirrors"]["docker.io"]["endpoint"] == ["https://mirror.example"]
    assert after["oom_score"] == -999
    assert after["plugins"]["io.containerd.internal.v1.opt"]["path"] == "/opt/site-containerd"  # type: ignore[index]
    text = cfg.read_text()
    assert "# A node's own config" in text and "SystemdCgroup = true" in text  # the file is edited, not rewritten
    assert json.loads(re.search(r"^imports = (.*)$", text, re.M)[1]) == [  # type: ignore[index]
        f"{etc}/containerd/site.toml",
        f"{etc}/containerd/conf.d/lazypull.toml",
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('[plugins.cri]\n  sandbox_image = "x"\n', "config version 1"),  # no version: containerd's v1 format
        ("version = 2\n[proxy_plugins]\n[proxy_plugins]\n", "not valid TOML"),
        ('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  snapshotter = 5\n', "does not load"),
    ],
    ids=["version-1", "duplicated-tables", "rejected-by-containerd"],
)
def test_configs_it_cannot_merge_are_left_alone(tmp_path: Path, text: str, why: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    marker = tmp_path / "restarted"
    res = run_step(cfg, "--restart", f"touch {marker}")
    assert res.returncode == 2 and why in res.stderr and "unchanged" in res.stderr, res.stderr
    assert cfg.read_text() == text and not (tmp_path / "conf.d" / "lazypull.toml").exists()
    assert not marker.exists() and [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def test_failed_restart_puts_the_old_config_back(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    text = "version = 2\n"
    cfg.write_text(text)
    calls = tmp_path / "calls"
    # The first restart fails (containerd would not come up), the second succeeds on the old files.
    restart = f"sh -c 'echo x >> {calls}; test $(wc -l < {calls}) -gt 1'"
    res = run_step(cfg, "--restart", restart)
    assert res.returncode == 1 and "old config is back" in res.stderr, res.stderr
    assert cfg.read_text() == text and not (tmp_path / "conf.d" / "lazypull.toml").exists()
    assert calls.read_text().count("x") == 2


def test_daemonset_init_container_runs_the_step() -> None:
    ds = (ROOT / "deploy" / "kubernetes" / "lazypull-daemonset.yaml").read_text()
    init = ds.split("initContainers:", 1)[1].split("\n      containers:", 1)[0]
    assert ">>" not in init  # never appends to containerd's file
    command = json.loads(re.search(r"command: (\[.*?\])", init, re.S)[1])  # type: ignore[index]
    args = json.loads(re.search(r"args: (\[.*?\])", init, re.S)[1])  # type: ignore[index]
    assert command[1:] == ["-m", "lazypull.service.containerdconf"]
    assert "--host-root=/host" in args and any(a.startswith("--restart=") for a in args)
    with pytest.raises(SystemExit) as e:
        main([*args, "--help"])  # every option the manifest passes exists
    assert e.value.code == 0


def test_node_without_a_config_file_gets_one_that_imports_the_drop_in(tmp_path: Path) -> None:
    # containerd runs on its defaults: the new main file is an empty version 2 config.
    cfg = tmp_path / "containerd" / "config.toml"
    cfg.parent.mkdir()
    res = run_step(cfg, "--restart", "true")
    assert res.returncode == 0, res.stderr
    after = loaded(cfg)
    assert_lazypull(after)
    assert after["plugins"][CRI]["sandbox_image"]  # type: ignore[index]  # containerd's default, still there
    assert oct(cfg.stat().st_mode & 0o777) == "0o644"
    assert not (cfg.parent / "config.toml.lazypull-backup").exists()
