"""containerd's hosts.toml directory read into the client's endpoint list (no network)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from lazypull.errors import ConfigError
from lazypull.registry.endpoint import ALL_CAPABILITIES
from lazypull.registry.hosts import HostsConfig
from lazypull.registry.hostsdir import host_dir
from lazypull.service.config import DaemonConfig
from lazypull.service.main import build


def write(root: Path, host: str, text: str) -> Path:
    d = root / host
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.toml").write_text(text)
    return d


def test_hosts_in_file_order_then_server_with_v2_paths(tmp_path: Path) -> None:
    d = write(
        tmp_path,
        "registry.example:5000",
        'server = "https://registry.example:5000"\n'
        '[host."http://zone-cache:5000"]\ncapabilities = ["pull", "resolve"]\n'
        '[host."https://spegel.local/registry"]\ncapabilities = ["pull"]\nca = "spegel-ca.pem"\n'
        'header = { "X-Tenant" = ["a", "b"] }\n'
        '[host."https://odd.local/api"]\noverride_path = true\nskip_verify = true\n'
        'client = [["c.pem", "/abs/k.pem"]]\n',
    )
    hc = HostsConfig(hosts_dir=tmp_path)
    eps = hc.endpoints("registry.example:5000", "registry.example:5000")
    assert [e.api_url for e in eps] == [
        "http://zone-cache:5000/v2",
        "https://spegel.local/registry/v2",
        "https://odd.local/api",  # override_path: the path is the API root as written
        "https://registry.example:5000/v2",
    ]
    assert [e.is_mirror for e in eps] == [True, True, True, False]
    assert eps[0].capabilities == {"pull", "resolve"} and eps[1].capabilities == {"pull"}
    assert eps[3].capabilities == ALL_CAPABILITIES
    assert eps[1].ca == (str(d / "spegel-ca.pem"),)  # relative to the host's directory
    assert dict(eps[1].headers) == {"X-Tenant": "a, b"}
    assert eps[2].skip_verify and eps[2].client_cert == (str(d / "c.pem"), "/abs/k.pem")
    assert eps[0].ns_query and not eps[3].ns_query


def test_no_server_means_the_registry_itself(tmp_path: Path) -> None:
    write(tmp_path, "docker.io", '[host."https://mirror.gcr.io"]\ncapabilities = ["pull", "resolve"]\n')
    eps = HostsConfig(hosts_dir=tmp_path).endpoints("docker.io", "registry-1.docker.io")
    assert [e.api_url for e in eps] == ["https://mirror.gcr.io/v2", "https://registry-1.docker.io/v2"]
    # a path already ending in /v2 is kept as it is
    write(tmp_path, "quay.io", 'server = "https://quay.example/v2"\n')
    assert HostsConfig(hosts_dir=tmp_path).endpoints("quay.io", "quay.io")[0].api_url == "https://quay.example/v2"


def test_directory_lookup_port_form_then_default(tmp_path: Path) -> None:
    write(tmp_path, "_default", '[host."http://cache:5000"]\n')
    assert host_dir(tmp_path, "ghcr.io") == tmp_path / "_default"
    write(tmp_path, "reg.local:5000", "")
    assert host_dir(tmp_path, "reg.local:5000") == tmp_path / "reg.local:5000"
    write(tmp_path, "reg.local_5000_", "")
    assert host_dir(tmp_path, "reg.local:5000") == tmp_path / "reg.local_5000_"
    eps = HostsConfig(hosts_dir=tmp_path).endpoints("ghcr.io", "ghcr.io")
    assert [e.host for e in eps] == ["cache:5000", "ghcr.io"]


def test_certificate_files_without_hosts_toml(tmp_path: Path) -> None:
    d = tmp_path / "reg.local"
    d.mkdir()
    for name in ("ca.crt", "client.cert", "client.key"):
        (d / name).write_text("x")
    (ep,) = HostsConfig(hosts_dir=tmp_path).endpoints("reg.local", "reg.local")
    assert ep.ca == (str(d / "ca.crt"),) and ep.client_cert == (str(d / "client.cert"), str(d / "client.key"))


def test_resolver_table_wins_over_the_directory(tmp_path: Path) -> None:
    write(tmp_path, "a.io", '[host."http://dir-mirror"]\n')
    hc = HostsConfig.from_mapping({"host": {"a.io": {"mirrors": [{"host": "toml-mirror", "insecure": True}]}}})
    hc.hosts_dir = tmp_path
    assert [e.host for e in hc.endpoints("a.io", "a.io")] == ["toml-mirror", "a.io"]
    write(tmp_path, "b.io", '[host."http://dir-mirror"]\n')
    assert [e.host for e in hc.endpoints("b.io", "b.io")] == ["dir-mirror", "b.io"]


def test_bad_values_are_errors_naming_the_file(tmp_path: Path) -> None:
    write(tmp_path, "a.io", '[host."http://m"]\ncapabilities = ["pull", "fly"]\n')
    with pytest.raises(ConfigError, match="fly"):
        HostsConfig(hosts_dir=tmp_path).endpoints("a.io", "a.io")
    write(tmp_path, "b.io", "server = [")
    with pytest.raises(ConfigError, match=r"b\.io/hosts\.toml"):
        HostsConfig(hosts_dir=tmp_path).endpoints("b.io", "b.io")


def test_daemon_config_reaches_the_layer_server(tmp_path: Path) -> None:
    """[registry] config_path and max_requests_per_host: the daemon's client uses them and
    the file handed to the layer server carries them."""
    write(tmp_path / "certs.d", "a.io", '[host."http://m:5000"]\n')
    cfg = DaemonConfig.from_mapping(
        tomllib.loads(f'[registry]\nconfig_path = "{tmp_path / "certs.d"}"\nmax_requests_per_host = 4\n')
    )
    assert cfg.hosts.hosts_dir == tmp_path / "certs.d" and cfg.hosts.max_requests_per_host == 4
    (tmp_path / "root").mkdir()
    sn = build(cfg, tmp_path / "root")
    try:
        handed = HostsConfig.load(Path(str(sn.remote.registry["registry_config"])))
        assert handed.hosts_dir == tmp_path / "certs.d" and handed.max_requests_per_host == 4
        assert [e.host for e in handed.endpoints("a.io", "a.io")] == ["m:5000", "a.io"]
    finally:
        sn.close()
    with pytest.raises(ConfigError, match="max_requests_per_host"):
        DaemonConfig.from_mapping({"registry": {"max_requests_per_host": 0}})
