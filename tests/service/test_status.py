"""``lazypull status``: the report a daemon builds, its socket, its formatting, and the
metrics that go with it (first reads, fetch latency per registry host)."""

from __future__ import annotations

import io
import json
import stat
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from rich.console import Console

from lazypull.cli.main import main
from lazypull.cli.status import human_bytes, render, seconds
from lazypull.opstats import BUCKETS
from lazypull.registry.credentials import Credential
from lazypull.registry.reference import Reference
from lazypull.service.args import status_socket
from lazypull.service.cri.keychain import Keychain
from lazypull.service.metrics import MAX_HOSTS, LayerStatsCollector
from lazypull.service.status import node_status
from lazypull.service.statusapi import StatusUnavailable, fetch_status, serve_status
from lazypull.snapshot import fallback
from lazypull.snapshot.imagebook import FALLBACK, LAZY
from lazypull.snapshot.snapshotter import RemoteSettings, Snapshotter
from tests.support.daemon import start_daemon

LAZY_IMG = "reg.example:5000/app:1"
PLAIN_IMG = "reg.example:5000/plain:1"
L1, L2, L3 = ("sha256:" + c * 64 for c in "123")


class _Client:
    """A registry client as far as the status looks at it (its options)."""

    def __init__(self, docker_config: Path) -> None:
        from lazypull.registry.options import RegistryOptions

        self.opts = RegistryOptions(docker_config=docker_config)


class _Resolver:
    def __init__(self, keychain: Keychain | None, docker_config: Path) -> None:
        self.keychain = keychain
        self.client = _Client(docker_config)


def _row(digest: str, ref: str, *, fetched: int, first: tuple[float, float] | None, fetch_s: float = 0.02) -> dict:
    """A layer server's stats row, as ``lazypull.service.layerserver.Layer.stats`` makes it."""
    buckets = [0] * (len(BUCKETS) + 1)
    buckets[next(i for i, b in enumerate(BUCKETS) if fetch_s <= b)] = 1
    return {
        "mountpoint": f"/x/{digest}",
        "mount_id": digest[7:23],
        "state": "serving",
        "layer": digest,
        "ref": ref,
        "size": 1000,
        "fetched_bytes": fetched,
        "prefetched_bytes": 10,
        "background_bytes": 0,
        "bytes_served": 5,
        "prefetch_done": True,
        "index": "compact",
        "first_read": list(first) if first else None,
        "fetch": {"count": 1, "sum": fetch_s, "buckets": buckets},
        "ops": {},
    }


@pytest.fixture
def sn(tmp_path: Path) -> Snapshotter:
    s = Snapshotter(tmp_path / "root", None, RemoteSettings(cache_dir=tmp_path / "cache", registry={}))
    docker = tmp_path / "docker.json"
    docker.write_text(json.dumps({"auths": {"other.example": {"auth": "eDp5"}}}))
    s.resolver = _Resolver(Keychain(keyring=None), docker)  # type: ignore[assignment]
    return s


def _node_with_two_images(sn: Snapshotter, monkeypatch: pytest.MonkeyPatch) -> None:
    sn.book.prepared(LAZY_IMG)
    sn.book.layer(LAZY_IMG, L1, LAZY)
    sn.book.prepared(PLAIN_IMG)
    sn.book.layer(PLAIN_IMG, L2, FALLBACK, fallback.NOT_LAZY, f"layer {L2} is neither eStargz nor SOCI")
    key = sn.book.pod_pull(LAZY_IMG, "default", "web", "uid-web")
    sn.book.hint(key, "done", files=4, bytes_fetched=4096, bytes_cached=0)
    assert sn.resolver is not None and sn.resolver.keychain is not None
    sn.resolver.keychain.add(LAZY_IMG, Credential("kube", "s3cret-value"))  # type: ignore[attr-defined]
    # A lazy layer mounted before the daemon's restart: known from the snapshot store only.
    spec = json.dumps({"ref": "other.example/old:2", "layer": {"digest": L3}})
    sn.store.create_committed("old", "", {}, {"digest": L3, "mountpoint": "/x/old", "size": "1", "spec": spec})
    prepared = sn.book.images()[0].prepared_at
    assert prepared is not None
    rows = [
        _row(L1, LAZY_IMG, fetched=12345, first=(prepared + 0.25, 0.004)),
        _row(L3, "other.example/old:2", fetched=0, first=None),
    ]
    monkeypatch.setattr(sn.layers, "server_stats", lambda: {"layers": rows})


def test_report_per_image_and_pod_without_secrets(sn: Snapshotter, monkeypatch: pytest.MonkeyPatch) -> None:
    _node_with_two_images(sn, monkeypatch)
    before = REGISTRY.get_sample_value("lazypull_image_first_read_seconds_count") or 0.0
    report = node_status(sn)
    images = {i["ref"]: i for i in report["images"]}
    lazy, plain, old = images[LAZY_IMG], images[PLAIN_IMG], images["other.example/old:2"]
    assert (lazy["mode"], lazy["reasons"], lazy["credentials"], lazy["pods"]) == ("lazy", [], "cri", ["default/web"])
    assert lazy["fetched_bytes"] == 12345 and lazy["prefetched_bytes"] == 10
    assert lazy["first_read_seconds"] == pytest.approx(0.25, abs=0.01)
    [layer] = lazy["layers"]
    assert layer["first_read_latency_seconds"] == 0.004 and layer["state"] == "absent" and layer["index"] == "compact"
    assert (plain["mode"], plain["reasons"], plain["credentials"]) == ("fallback", ["not_lazy"], "anonymous")
    assert plain["layers"][0]["state"] == "pulled-in-full" and "eStargz" in plain["layers"][0]["detail"]
    assert (old["mode"], old["credentials"], old["prepared_at"]) == ("lazy", "docker-config", None)
    [pod] = report["pods"]
    assert (pod["namespace"], pod["name"], pod["images"]) == ("default", "web", [LAZY_IMG])
    assert pod["hint"] == {"state": "done", "files": 4, "bytes_fetched": 4096, "bytes_cached": 0}
    assert "s3cret" not in json.dumps(report)
    # The image's time to its first read is observed once, however often the status is asked.
    node_status(sn)
    assert (REGISTRY.get_sample_value("lazypull_image_first_read_seconds_count") or 0.0) == before + 1


def test_keychain_remembers_where_each_credential_came_from() -> None:
    kc = Keychain(keyring=None)
    kc.add("reg.example/a:1", Credential("u", "p"))
    kc.add("reg.example/b:1", Credential("u", "p"), source="provider")
    assert kc.source("reg.example/a:2") == "cri"  # per repository, like the credential
    assert kc.source(Reference.parse("reg.example/b:1")) == "provider"
    assert kc.source("reg.example/c:1") is None and kc.source("not a ref!") is None


def test_tables_for_a_person(sn: Snapshotter, monkeypatch: pytest.MonkeyPatch) -> None:
    _node_with_two_images(sn, monkeypatch)
    out = io.StringIO()
    render(node_status(sn), Console(file=out, width=250, color_system=None))
    text = out.getvalue()
    for want in ("Images", "Layers", "Pod sandboxes", LAZY_IMG, PLAIN_IMG, "not_lazy", "fallback (not_lazy)"):
        assert want in text, want
    assert f"{LAZY_IMG} (lazy)" in text and "done: 4 files, 4.0 KiB fetched" in text and "12.1 KiB" in text
    empty = io.StringIO()
    render({"daemon": {}, "layer_server": {}, "images": [], "pods": []}, Console(file=empty, color_system=None))
    assert "no images prepared since the daemon started" in empty.getvalue()
    assert (human_bytes(None), human_bytes(512), human_bytes(3 << 30)) == ("-", "512 B", "3.0 GiB")
    assert (seconds(None), seconds(0.25), seconds(2)) == ("-", "250 ms", "2.00 s")


def test_status_socket_is_0600_and_answers_json(tmp_path: Path) -> None:
    path = tmp_path / "s" / "status.sock"
    server = serve_status(path, lambda: {"images": [], "ok": True})
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert fetch_status(path) == {"images": [], "ok": True}
    finally:
        server.shutdown()
        server.server_close()
    failing = serve_status(path, lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    try:
        with pytest.raises(StatusUnavailable, match="status report failed: division by zero"):
            fetch_status(path)
    finally:
        failing.shutdown()
        failing.server_close()


def test_no_daemon_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--address", str(tmp_path / "lazypull.sock")]) == 1
    err = capsys.readouterr().err
    assert "the lazypull daemon is not running" in err and "lazypull-status.sock" in err


def test_status_of_a_running_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = start_daemon(tmp_path / "d")
    try:
        sock = status_socket(d.address)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert main(["status", "--json", "--address", str(d.address)]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["images"] == [] and report["daemon"]["root"] == str(d.root)
        assert report["layer_server"]["up"] is True
        assert main(["status", "--address", str(d.address)]) == 0
        assert "no images prepared" in capsys.readouterr().out
    finally:
        d.stop()
        d.stop_layers()
    assert not sock.exists()
    assert main(["status", "--address", str(d.address)]) == 1


def _samples(collector: LayerStatsCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in collector.collect() for s in fam.samples}


def test_fetch_latency_by_registry_host_is_bounded(sn: Snapshotter, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [_row("sha256:" + f"{i:064x}", f"host{i}.example/a:1", fetched=1, first=None) for i in range(MAX_HOSTS + 3)]
    rows.append(_row("sha256:" + "f" * 64, "host0.example/b:1", fetched=1, first=(time.time(), 0.5), fetch_s=0.3))
    monkeypatch.setattr(sn.layers, "server_stats", lambda: {"layers": rows})
    before = REGISTRY.get_sample_value("lazypull_layer_first_read_seconds_count") or 0.0
    samples = _samples(LayerStatsCollector(sn))
    counts = {dict(k[1])["host"]: v for k, v in samples.items() if k[0] == "lazypull_fetch_duration_seconds_count"}
    assert len(counts) == MAX_HOSTS + 1 and counts["other"] == 3 and counts["host0.example"] == 2
    inf = ("lazypull_fetch_duration_seconds_bucket", (("host", "host0.example"), ("le", "+Inf")))
    assert samples[inf] == 2
    assert (REGISTRY.get_sample_value("lazypull_layer_first_read_seconds_count") or 0.0) == before + 1


def test_fallbacks_are_counted_under_both_names() -> None:
    def both() -> tuple[float, float]:
        return tuple(  # type: ignore[return-value]
            REGISTRY.get_sample_value(n, {"reason": "tls"}) or 0.0
            for n in ("lazypull_fallback_total", "lazypull_fallback_layers_total")
        )

    before = both()
    fallback.count_fallback(fallback.TLS)
    assert both() == (before[0] + 1, before[1] + 1)


def test_status_socket_fits_a_unix_socket_path(tmp_path: Path) -> None:
    assert status_socket("/run/x/containerd-lazypull-grpc.sock") == Path("/run/x/containerd-lazypull-grpc-status.sock")
    long = "/" + "d" * 95 + "/lazypull.sock"
    p = status_socket(long)
    assert len(str(p)) <= 107 and p == status_socket(long) and p != status_socket(long + "2")
