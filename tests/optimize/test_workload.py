"""How the workload is derived from the image config and the overrides, and its runtime spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazypull.errors import LazypullError
from lazypull.optimize.workload import RuntimeSpec, Workload, json_list, resolve_user

CONFIG = {
    "config": {
        "Entrypoint": ["/entry"],
        "Cmd": ["--serve"],
        "Env": ["PATH=/opt/bin", "LANG=C"],
        "WorkingDir": "/app",
        "User": "app",
    }
}


def test_image_config_gives_the_command() -> None:
    w = Workload.from_config(CONFIG)
    assert w.args == ["/entry", "--serve"] and w.cwd == "/app" and w.user == "app"
    assert w.env == ["PATH=/opt/bin", "LANG=C"]


def test_overrides_follow_docker_semantics() -> None:
    # a new entrypoint drops the image's Cmd; args replace Cmd; env overrides by key
    assert Workload.from_config(CONFIG, entrypoint=["/bin/sh"]).args == ["/bin/sh"]
    assert Workload.from_config(CONFIG, args=["--once"]).args == ["/entry", "--once"]
    w = Workload.from_config(CONFIG, env=["LANG=en_US.UTF-8", "X=1"], cwd="/")
    assert w.env == ["PATH=/opt/bin", "LANG=en_US.UTF-8", "X=1"] and w.cwd == "/"
    assert any(e.startswith("PATH=") for e in Workload.from_config({"config": {"Cmd": ["x"]}}).env)


def test_bad_workloads_are_clear_errors() -> None:
    with pytest.raises(LazypullError, match="no Entrypoint or Cmd"):
        Workload.from_config({"config": {}})
    with pytest.raises(LazypullError, match="KEY=VALUE"):
        Workload.from_config(CONFIG, env=["NOVALUE"])
    with pytest.raises(LazypullError, match="JSON array"):
        json_list("/bin/sh -c", "--entrypoint")
    with pytest.raises(LazypullError, match="JSON array"):
        json_list('["a", 1]', "--args")
    assert json_list(None, "--args") is None


def test_user_names_resolve_through_the_image(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nstaff:x:50:\n")
    assert resolve_user(tmp_path, "") == (0, 0)
    assert resolve_user(tmp_path, "app") == (1000, 1001)
    assert resolve_user(tmp_path, "app:staff") == (1000, 50)
    assert resolve_user(tmp_path, "42:7") == (42, 7)
    with pytest.raises(LazypullError, match="nobody"):
        resolve_user(tmp_path, "nobody")


def test_runtime_spec_isolates_the_network_unless_host(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("app:x:1000:1000::/:/bin/sh\n")
    spec = RuntimeSpec(Workload.from_config(CONFIG), tmp_path).to_json()
    assert {"type": "network"} in spec["linux"]["namespaces"]
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000}
    assert spec["root"]["path"] == str(tmp_path) and spec["process"]["args"] == ["/entry", "--serve"]
    host = RuntimeSpec(Workload.from_config(CONFIG, network="host"), tmp_path).to_json()
    assert {"type": "network"} not in host["linux"]["namespaces"]
    assert any(m["destination"] == "/etc/resolv.conf" for m in host["mounts"])
