"""The gRPC service on a real unix socket, sd_notify, and the config file."""

from __future__ import annotations

import logging
import os
import socket
import stat
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
