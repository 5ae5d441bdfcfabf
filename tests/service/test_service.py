"""The gRPC service on a real unix socket, sd_notify, and the config file."""

from __future__ import annotations

import logging
import os
import socket
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import grpc
import pytest

from lazypull.service.config import DaemonConfig
from lazypull.service.notify import sd_notify
from lazypull.service.proto import snapshots_pb2, snapshots_pb2_grpc
from tests.support.daemon import start_daemon

ROOT = Path(__file__).resolve().parents[2]


def test_grpc_round_trip_and_socket_permissions(tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "d")
    try:
        assert stat.S_IMODE(d.address.stat().st_mode) == 0o600
        assert stat.S_IMODE(d.root.stat().st_mode) == 0o700
        with grpc.insecure_channel(f"unix://{d.address}") as ch:
            stub = snapshots_pb2_grpc.SnapshotsStub(ch)
            r = stub.Prepare(snapshots_pb2.PrepareSnapshotRequest(key="k1", labels={"a": "b"}))
            assert r.mounts[0].type == "bind"
            stub.Commit(snapshots_pb2.CommitSnapshotRequest(name="n1", key="k1"))
            info = stub.Stat(snapshots_pb2.StatSnapshotRequest(key="n1")).info
            assert info.kind == snapshots_pb2.COMMITTED and info.labels["a"] == "b"
            with pytest.raises(grpc.RpcError) as e:
                stub.Stat(snapshots_pb2.StatSnapshotRequest(key="nope"))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as e:
                stub.Commit(snapshots_pb2.CommitSnapshotRequest(name="n2", key="n1"))
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            keys = [i.name for resp in stub.List(snapshots_pb2.ListSnapshotsRequest()) for i in resp.info]
            assert keys == ["n1"]
            upd = snapshots_pb2.UpdateSnapshotRequest(info=snapshots_pb2.Info(name="n1", labels={"c": "d"}))
            upd.update_mask.paths.append("labels.c")
            assert dict(stub.Update(upd).info.labels) == {"a": "b", "c": "d"}
            assert stub.Usage(snapshots_pb2.UsageRequest(key="n1")).inodes == 0
            stub.Remove(snapshots_pb2.RemoveSnapshotRequest(key="n1"))
    finally:
        d.stop()
        d.stop_layers()  # the daemon leaves its layer server running by design
    assert "shutting down" in d.log()


def test_sd_notify_sends_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sd_notify("READY=1")
        assert s.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1")


def test_daemon_notifies_systemd_when_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        s.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        d = start_daemon(tmp_path / "d")
        try:
            assert s.recv(100) == b"READY=1"
            assert d.address.exists()
        finally:
            d.stop()
            d.stop_layers()
        assert s.recv(100) == b"STOPPING=1"


def test_example_config_parses_and_unknown_keys_warn(caplog: pytest.LogCaptureFixture) -> None:
    cfg = DaemonConfig.load(ROOT / "deploy" / "config.toml")
    assert cfg.metrics_address == "127.0.0.1:50051" and cfg.max_retries == 5
    caplog.set_level(logging.WARNING)
    DaemonConfig.from_mapping(
        tomllib.loads('bogus = 1\n[blob]\nfoo = 2\n[[resolver.host."a.io".mirrors]]\nhost = "m"\n')
    )
    assert "unknown key 'bogus'" in caplog.text and "blob.foo" in caplog.text
    m = DaemonConfig.from_mapping(tomllib.loads('[[resolver.host."a.io".mirrors]]\nhost = "m:5000"\ninsecure = true\n'))
    eps = m.hosts.endpoints("a.io", "a.io")
    assert eps[0].host == "m:5000" and eps[0].plain_http and eps[-1].host == "a.io"
    assert os.path.exists(ROOT / "deploy" / "containerd-lazypull-grpc.service")
    unit = (ROOT / "deploy" / "containerd-lazypull-grpc.service").read_text()
    assert "Type=notify" in unit and "KillMode=process" in unit


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('passthrough = "false"', "passthrough must be a boolean (true/false), not the string 'false'"),
        ('noprefetch = "no"', "noprefetch must be a boolean"),
        ("record_access = 1", "record_access must be a boolean"),
        ("prefetch_timeout_sec = -1", "prefetch_timeout_sec must be at least 0"),
        ("[blob]\nfetching_timeout_sec = -5", "blob.fetching_timeout_sec must be at least"),
        ('[blob]\nfetching_timeout_sec = "30"', "blob.fetching_timeout_sec must be a number"),
        ("[blob]\nmax_retries = 2.5", "blob.max_retries must be an integer"),
        ("[cache]\nmax_bytes = -1", "cache.max_bytes must be at least 0"),
        ("[resolver]\ntimeout_sec = 0", "resolver.timeout_sec must be at least"),
        ('metrics_address = "50051"', "metrics_address must be HOST:PORT"),
        ("plain_http_hosts = [1]", "plain_http_hosts must be a list of strings"),
        ('[resolver.host."a.io"]\nskip_verify = "false"', 'resolver.host."a.io".skip_verify must be a boolean'),
        ("blob = 3", "[blob] must be a table"),
    ],
)
def test_config_is_typed_and_strict(tmp_path: Path, toml: str, message: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(toml + "\n")
    res = subprocess.run(
        [sys.executable, "-m", "lazypull.service.main", "--config", str(cfg), "--root", str(tmp_path / "r"),
         "--address", str(tmp_path / "s.sock")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "s.sock").exists()


def test_every_key_the_daemon_reads_is_known(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    cfg = DaemonConfig.from_mapping(
        tomllib.loads(
            "passthrough = true\nrecord_access = true\nnoprefetch = true\nno_background_fetch = true\n"
            'log_level = "debug"\nprefetch_timeout_sec = 3\nmetrics_address = "127.0.0.1:1"\n'
            'docker_config = "/x"\nplain_http_hosts = ["h:1"]\n'
            "[blob]\nfetching_timeout_sec = 30\nmax_retries = 0\nmin_fetch_bytes = 0\n"
            '[cache]\ndir = "/c"\nmax_bytes = 1\n'
            '[resolver]\ntimeout_sec = 5\nfailure_ttl_sec = 0\n[resolver.host."a.io"]\nplain_http = true\n'
        )
    )
    assert caplog.text == ""
    assert cfg.passthrough is True and cfg.record_access is True and cfg.noprefetch is True
    assert cfg.fetching_timeout_sec == 30.0 and isinstance(cfg.fetching_timeout_sec, float)
    assert cfg.resolve_timeout_sec == 5 and cfg.resolve_failure_ttl_sec == 0 and cfg.max_retries == 0
    assert DaemonConfig().fetching_timeout_sec == 300  # the reference's default


def test_busy_metrics_port_is_one_error_and_leaves_no_socket(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cfg = tmp_path / "config.toml"
        cfg.write_text(f'metrics_address = "127.0.0.1:{port}"\n')
        sock = tmp_path / "s.sock"
        res = subprocess.run(
            [sys.executable, "-m", "lazypull.service.main", "--config", str(cfg), "--root", str(tmp_path / "r"),
             "--address", str(sock)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "metrics" in errors[0] and str(port) in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not sock.exists()
