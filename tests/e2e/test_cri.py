"""The kubelet's whole path over CRI: a private (htpasswd) registry, credentials that only
PullImage carries, the pod's prefetch hint, a host-network pod with a locally built pause
image, and the container's first output; real containerd, runc, registry and FUSE."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lazypull.cli.main import main
from lazypull.fs.fsdclient import FsdClient, socket_path
from lazypull.oci.types import Manifest
from lazypull.registry.options import RegistryOptions
from lazypull.registry.repository import RegistryStore
from lazypull.service.cri.kubelet import Kubelet, Pod
from lazypull.service.cri.proto import api_pb2
from tests.support.containerd import Containerd, start_containerd
from tests.support.daemon import Daemon, start_daemon
from tests.support.images import Entry, busybox_layer, write_image
from tests.support.net import free_port, wait_for
from tests.support.pki import make_ca, make_cert
from tests.support.proxy import Proxy, start_proxy
from tests.support.registry import Registry, start_registry
from tests.support.tokenserver import start_token_server

pytestmark = pytest.mark.e2e

USER = "kube"
PASSWORD = "pull-s3cret-Zq9"
HINTED = os.urandom(3 << 20)  # the pod's hint names it; the container reads it
COLD = os.urandom(6 << 20)  # never read: stays remote
CONFIGS = {f"app/config/{n}.yaml": os.urandom(40_000) for n in ("a", "b", "c")}


@dataclass
class World:
    private: Registry  # htpasswd
    proxy: Proxy  # counts what the node fetches from the private registry
    public: Registry  # the pause image
    image: str  # eStargz, private, through the proxy
    pause: str
    layer_sizes: list[int]
    src: Path  # the app image as an OCI layout


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("cri-world")
    private = start_registry(root / "private", users={USER: PASSWORD})
    public = start_registry(root / "public")
    proxy = start_proxy(private.url)
    try:
        app = [Entry("app", "dir", mode=0o755), Entry("app/config", "dir", mode=0o755)]
        app += [Entry(n, data=d) for n, d in CONFIGS.items()]
        app += [Entry("app/hinted.bin", data=HINTED), Entry("app/cold.bin", data=COLD)]
        write_image(root / "src", [busybox_layer(), app], cmd=["/bin/sh"])
        user = ["--user", f"{USER}:{PASSWORD}"]
        plain = f"{private.host}/team/app:orig"
        assert main(["copy", "--plain-http", *user, f"oci:{root / 'src'}:latest", plain]) == 0
        assert main(["convert", "--plain-http", *user, "--oci", plain, f"{private.host}/team/app:esgz"]) == 0
        store = RegistryStore.open(
            f"{private.host}/team/app:esgz", RegistryOptions(plain_http=True, user=f"{USER}:{PASSWORD}")
        )
        d = store.resolve()
        sizes = [x.size for x in Manifest.parse(store.fetch(d), d.media_type).layers]
        # The sandbox's pause image, built here: static busybox sleeping (no registry outside).
        write_image(root / "pause", [busybox_layer()], cmd=["/bin/sleep", "2147483647"])
        pause = f"{public.host}/k8s/pause:local"
        assert main(["copy", "--plain-http", f"oci:{root / 'pause'}:latest", pause]) == 0
        yield World(private, proxy, public, f"{proxy.host}/team/app:esgz", pause, sizes, root / "src")
    finally:
        proxy.stop()
        private.stop()
        public.stop()


@dataclass
class Node:
    daemon: Daemon
    cd: Containerd
    metrics_port: int
    root: Path

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()


def cri_containerd_config(hosts: list[str]) -> str:
    return (
        '[plugins."io.containerd.grpc.v1.cri".containerd]\n'
        '  snapshotter = "lazypull"\n'
        "  disable_snapshot_annotations = false\n"
        + "".join(
            f'[plugins."io.containerd.grpc.v1.cri".registry.mirrors."{h}"]\n  endpoint = ["http://{h}"]\n'
            for h in hosts
        )
    )


@contextmanager
def make_node(
    tmp_path: Path, world: World, extra_hosts: tuple[str, ...] = (), daemon_config: str = ""
) -> Iterator[Node]:
    from tests.support.node import stop_node

    port = free_port()
    cd_root = tmp_path / "containerd"
    hosts = [world.proxy.host, world.private.host, world.public.host, *extra_hosts]
    cfg = (
        f"plain_http_hosts = {json.dumps(hosts)}\n"
        f'docker_config = "{tmp_path / "no-docker-config.json"}"\n'  # the node itself has no credentials
        f'no_background_fetch = true\nmetrics_address = "127.0.0.1:{port}"\nprefetch_timeout_sec = 20\n'
        "[blob]\nfetching_timeout_sec = 20\nmax_retries = 2\n"
        f'[cri_keychain]\nenable_keychain = true\nimage_service_path = "{cd_root / "containerd.sock"}"\n'
        + daemon_config
    )
    daemon = start_daemon(tmp_path / "daemon", cfg)
    try:
        cd = start_containerd(
            cd_root,
            proxy_plugins={"lazypull": daemon.address},
            extra_config=cri_containerd_config(hosts),
            cri_options=f'sandbox_image = "{world.pause}"\nrestrict_oom_score_adj = true',
        )
    except BaseException:
        daemon.stop()
        raise
    try:
        yield Node(daemon, cd, port, tmp_path)
    finally:
        stop_node(daemon, cd, tmp_path)


@pytest.fixture
def node(tmp_path: Path, world: World) -> Iterator[Node]:
    with make_node(tmp_path, world) as n:
        yield n


def _files_containing(root: Path, secret: bytes) -> list[str]:
    """Files under *root* holding *secret*, not descending into the lazy mounts (reading them would fetch)."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(dirpath, d))]
        for f in files:
            p = os.path.join(dirpath, f)
            try:
                if os.path.isfile(p) and secret in Path(p).read_bytes():
                    found.append(p)
            except OSError:
                pass
    return found


def _metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_private_image_pod_starts_lazily_with_kubelet_credentials_and_hint(node: Node, world: World) -> None:
    world.proxy.reset_counters()
    pod = Pod("web", node.root / "pods" / "web").with_prefetch(["/app/config/*", "/app/hinted.bin", "/nope/*"])
    cmd = ["/bin/sh", "-c", "md5sum /app/hinted.bin; echo started"]
    with Kubelet(node.daemon.address, node.cd.address) as kubelet:
        times = kubelet.run(world.image, pod, cmd, user=f"{USER}:{PASSWORD}", wait_for="started")
    assert hashlib.md5(HINTED).hexdigest() in times.output
    log = node.daemon.log()
    # Every layer was mounted lazily (not pulled in full) with the kubelet's credentials ...
    assert len(re.findall(r"layer \w+ of \S+ mounted lazily", log)) == len(world.layer_sizes)
    assert not [x for x in log.splitlines() if "pulled normally" in x and world.image in x]  # (the pause image is)
    # busybox's layer (run) and the hinted file, fetched once by the prefetch; COLD never came.
    assert world.proxy.blob_bytes() < world.layer_sizes[0] + 1.2 * len(HINTED) < 0.5 * sum(world.layer_sizes)
    # ... the hinted files were made local before the container started, one log line for the pod ...
    assert re.search(r"pod default/web: prefetched 4 hinted files of \S+ from 1 layers", log)
    metrics = node.metrics()
    assert _metric(metrics, "lazypull_prefetch_hint_files_total") == 4
    assert _metric(metrics, "lazypull_prefetch_hint_pods_total", '{result="ok"}') == 1
    assert _metric(metrics, "lazypull_prefetch_hint_fetched_bytes_total") >= len(HINTED)
    # ... under the layer server's one cache bound (it accounts for what the prefetch wrote) ...
    caches = FsdClient(socket_path(node.daemon.root)).stats()["caches"]
    assert sum(c["disk_bytes"] for c in caches) >= len(HINTED)
    # ... and the credentials were never logged or written under the daemon's root.
    assert PASSWORD not in log
    assert not _files_containing(node.daemon.root, PASSWORD.encode())
    print(
        f"\nCRI pod: pull {times.pull_s:.2f}s sandbox {times.sandbox_s:.2f}s create {times.create_s:.2f}s "
        f"start {times.start_s:.2f}s first output {times.first_output_s:.2f}s total {times.total_s:.2f}s; "
        f"{world.proxy.blob_bytes() / 1e6:.1f} of {sum(world.layer_sizes) / 1e6:.1f} MB fetched"
    )


def test_errors_pass_through_and_malformed_hints_are_ignored(node: Node, world: World) -> None:
    pod = Pod("bad-hint", node.root / "pods" / "bad").with_prefetch("{not json")
    with Kubelet(node.daemon.address, node.cd.address) as kubelet:
        with pytest.raises(grpc.RpcError) as e:  # no credentials: containerd's own error, unchanged
            kubelet.pull(world.image, Pod("anon", node.root / "pods" / "anon"))
        assert e.value.code() == grpc.StatusCode.UNKNOWN and "401" in (e.value.details() or "")
        ref = kubelet.pull(world.image, pod, user=f"{USER}:{PASSWORD}")
        assert ref.startswith("sha256:")
    assert "pod default/bad-hint: ignoring prefetch hint: prefetch hint is not JSON" in node.daemon.log()
    assert _metric(node.metrics(), "lazypull_prefetch_hint_pods_total", '{result="malformed"}') == 1
    # The older CRI package name is forwarded too (kubelets before 1.26 may speak it).
    with grpc.insecure_channel(f"unix://{node.daemon.address}") as ch:
        status = ch.unary_unary("/runtime.v1alpha2.ImageService/ImageStatus")
        req = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=world.image)).SerializeToString()
        reply = api_pb2.ImageStatusResponse.FromString(status(req, timeout=30))
    assert reply.image.id == ref


def test_short_lived_tokens_refresh_in_lazy_mounts(tmp_path: Path, world: World) -> None:
    """A token-auth registry whose tokens live 2 s: the layers keep reading after they expire."""
    ca = make_ca(tmp_path / "pki")
    ts = start_token_server(make_cert(tmp_path / "pki", ca, "token-signer", server=False), {"bob": "hunter2"}, ttl=2)
    reg = start_registry(tmp_path / "token-reg", token=ts.registry_config())
    try:
        image = f"{reg.host}/tok/app:esgz"
        user = ["--plain-http", "--user", "bob:hunter2"]
        assert main(["copy", *user, f"oci:{world.src}:latest", f"{reg.host}/tok/app:orig"]) == 0
        assert main(["convert", *user, "--oci", f"{reg.host}/tok/app:orig", image]) == 0
        with make_node(tmp_path / "n", world, (reg.host,)) as node, Kubelet(node.daemon.address, node.cd.address) as k:
            pod = Pod("tok", node.root / "pods" / "tok")
            ref = k.pull(image, pod, user="bob:hunter2")
            assert len(re.findall(r"layer \w+ of \S+ mounted lazily", node.daemon.log())) == 2
            issued = len(ts.issued)
            time.sleep(2.5)  # every token handed out so far has expired; containerd needs the registry no more
            t = k.run(ref, pod, ["/bin/sh", "-c", "md5sum /app/cold.bin"], wait_for="cold", pull=False)
            assert hashlib.md5(COLD).hexdigest() in t.output
            assert len(ts.issued) > issued  # the lazy mounts refreshed theirs with the kubelet's credentials
            log = node.daemon.log()
            assert "hunter2" not in log
    finally:
        reg.stop()
        ts.stop()


RULES = Path(__file__).parents[2] / "deploy" / "prometheus" / "lazypull-rules.yaml"
PROMTOOL = shutil.which("promtool")
# The reference daemon's series, kept under its name for its dashboards.
KNOWN_LINT = 'stargz_fs_operation_duration_milliseconds use base unit "seconds" instead of "milliseconds"'


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over (upper bound, cumulative count), same float steps."""
    buckets = sorted(buckets)
    rank = q * buckets[-1][1]
    b = next((i for i in range(len(buckets) - 1) if buckets[i][1] >= rank), len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    if b == 0 and buckets[0][0] <= 0:
        return buckets[0][0]
    start, end, count = 0.0, buckets[b][0], buckets[b][1]
    if b > 0:
        start = buckets[b - 1][0]
        count -= buckets[b - 1][1]
        rank -= buckets[b - 1][1]
    return start + (end - start) * (rank / count)


def rules_test_from_scrape(scrape: str) -> tuple[dict[str, object], dict[str, float]]:
    """A promtool rules test: each counter of the scrape grows from 0 to its scraped value
    over 5 minutes on node-1; the expected values follow from Prometheus' rate()."""
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(scrape)
        for s in fam.samples
    }
    wanted = [
        k
        for k in samples
        if k[0] in ("stargz_cache_hits_total", "stargz_cache_requests_total", "stargz_bytes_downloaded_total")
        or (k[0] == "stargz_fs_operation_duration_seconds_bucket" and ("operation", "read") in k[1])
    ]
    series = []
    for name, labels in wanted:
        text = ",".join(f'{k}="{v}"' for k, v in (*labels, ("instance", "node-1"), ("job", "lazypull")))
        series.append({"series": f"{name}{{{text}}}", "values": f"0x9 {samples[(name, labels)]!r}"})
    # 0 -> v over [0s, 300s], sampled every 30s: rate() multiplies by (300 s / 300 s) / 300 s.
    rate = {k: v * ((300.0 / 300.0) / 300.0) for k, v in samples.items()}
    hits, reqs = rate[("stargz_cache_hits_total", ())], rate[("stargz_cache_requests_total", ())]
    read = [
        (float("inf") if dict(lb)["le"] == "+Inf" else float(dict(lb)["le"]), v)
        for (n, lb), v in rate.items()
        if n == "stargz_fs_operation_duration_seconds_bucket" and ("operation", "read") in lb
    ]
    expected = {
        "stargz_cache_hit_rate": hits / reqs,
        "stargz_bytes_fetched": rate[("stargz_bytes_downloaded_total", ())],
        "stargz_fetch_duration_seconds": bucket_quantile(0.99, read),
    }
    tests = [
        {
            "expr": name,
            "eval_time": "5m",
            "exp_samples": [
                {
                    "labels": f'{name}{{instance="node-1"'
                    + (',quantile="0.99"' if name == "stargz_fetch_duration_seconds" else "")
                    + "}",
                    "value": value,
                }
            ],
        }
        for name, value in expected.items()
    ]
    return {
        "rule_files": [str(RULES)],
        "evaluation_interval": "30s",
        "tests": [{"interval": "30s", "input_series": series, "promql_expr_test": tests}],
    }, expected


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) not installed")
def test_recording_rules_on_a_real_scrape(node: Node, world: World, tmp_path: Path) -> None:
    pod = Pod("metrics", node.root / "pods" / "metrics")
    with Kubelet(node.daemon.address, node.cd.address) as kubelet:
        kubelet.run(
            world.image, pod, ["/bin/sh", "-c", "md5sum /app/hinted.bin /app/config/*"], user=f"{USER}:{PASSWORD}"
        )

    def reads_published() -> bool:  # the mounts publish their counters every second
        return _metric(node.metrics(), "stargz_bytes_downloaded_total") >= len(HINTED)

    wait_for(reads_published, 20, "read counters in /metrics")
    scrape = node.metrics()
    (tmp_path / "scrape.prom").write_text(scrape)
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=scrape, capture_output=True, text=True)  # type: ignore[list-item]
    assert [x for x in lint.stdout.splitlines() + lint.stderr.splitlines() if x.strip()] in ([], [KNOWN_LINT])
    test, expected = rules_test_from_scrape(scrape)
    assert 0 < expected["stargz_cache_hit_rate"] <= 1 and expected["stargz_bytes_fetched"] > 0
    assert 0 < expected["stargz_fetch_duration_seconds"] <= 5
    (tmp_path / "rules_test.yaml").write_text(json.dumps(test, indent=1))  # JSON is YAML
    res = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / "rules_test.yaml")], capture_output=True, text=True)  # type: ignore[list-item]
    assert res.returncode == 0, res.stdout + res.stderr
    # promtool compares exactly: a wrong rule or a wrong expectation fails; so does a changed one.
    test["tests"][0]["promql_expr_test"][0]["exp_samples"][0]["value"] *= 1.001  # type: ignore[index]
    (tmp_path / "rules_test_wrong.yaml").write_text(json.dumps(test))
    wrong = subprocess.run([PROMTOOL, "test", "rules", str(tmp_path / "rules_test_wrong.yaml")], capture_output=True)  # type: ignore[list-item]
    assert wrong.returncode != 0
