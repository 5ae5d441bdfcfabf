"""Credentials from a real exec credential provider plugin (an executable speaking the
kubelet's protocol on stdin/stdout): requests, matching, cache key types, expiry and
rotation, timeouts, bad answers and failing plugins."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from lazypull.registry.credentials import Credential
from lazypull.registry.reference import Reference
from lazypull.service.cri.credchain import CredentialChain
from lazypull.service.cri.credprovider import CredentialProviders, Provider, ProviderError, run_plugin
from lazypull.service.cri.credproviderconfig import parse_config
from lazypull.service.cri.keychain import Keychain
from tests.support.credplugin import Plugin, auth_answer, provider_config

SECRET = "pw-Zk3-never-logged"


@pytest.fixture
def plugin(tmp_path: Path) -> Plugin:
    return Plugin(tmp_path / "bin", tmp_path / "state")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def providers(
    plugin: Plugin, match: list[str] | None = None, clock: Clock | None = None, **extra: object
) -> CredentialProviders:
    cfgs = parse_config(provider_config(plugin, match or ["*.io", "127.0.0.1:5000"], **extra), plugin.bin_dir)
    return CredentialProviders([Provider(c, timeout=5, clock=clock or time.monotonic) for c in cfgs])


def ref(text: str) -> Reference:
    return Reference.parse(text)


def test_request_is_the_kubelets_and_the_answer_is_used(plugin: Plugin) -> None:
    plugin.answer(auth_answer({"reg.io/team": ("alice", SECRET)}))
    cp = providers(
        plugin,
        args=["get-credentials", "--region=x"],
        env=[{"name": "PLUGIN_STATE", "value": str(plugin.state)}, {"name": "PLUGIN_MARK", "value": "from-config"}],
    )
    cred = cp.get(ref("reg.io/team/app:v1"))
    assert cred == Credential("alice", SECRET)
    [r] = plugin.requests()
    # The repository, fully qualified, without tag or digest: what the kubelet sends.
    assert r["request"] == {
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderRequest",
        "image": "reg.io/team/app",
    }
    assert r["args"] == ["get-credentials", "--region=x"] and r["mark"] == "from-config"
    # Another tag or a digest of the same repository: the cached (Image) answer.
    assert cp.get(ref("reg.io/team/app@sha256:" + "a" * 64)) == cred
    assert plugin.runs == 1
    # A repository the answer's auth keys do not match: the plugin ran (match), no credential.
    assert cp.get(ref("reg.io/ops/app:v1")) is None
    assert plugin.runs == 2
    # An image matchImages does not cover: the plugin is not run at all.
    assert cp.get(ref("reg.example.com/team/app:v1")) is None
    assert plugin.runs == 2
    assert cp.get(ref("busybox")) is None  # docker.io/library/busybox: "*.io" matches it (2 labels)
    assert plugin.runs == 3
    assert cp.get(ref("localhost/library/busybox")) is None
    assert plugin.runs == 3


def test_most_specific_auth_entry_wins(plugin: Plugin) -> None:
    plugin.answer(
        auth_answer(
            {
                "*.io": ("any", "p0"),
                "reg.io": ("host", "p1"),
                "https://reg.io/v2/team": ("team", "p2"),
                "reg.io/team/app": ("app", "p3"),
            },
            key_type="Global",
        )
    )
    cp = providers(plugin)
    assert cp.get(ref("reg.io/team/app:1")).username == "app"  # type: ignore[union-attr]
    assert cp.get(ref("reg.io/team/web:1")).username == "team"  # type: ignore[union-attr]
    assert cp.get(ref("reg.io/ops/web:1")).username == "host"  # type: ignore[union-attr]
    assert cp.get(ref("other.io/ops/web:1")).username == "any"  # type: ignore[union-attr]
    assert plugin.runs == 1  # Global: one answer for every image


def test_cache_key_types(plugin: Plugin) -> None:
    plugin.answer(auth_answer({"*.io": ("u", "p-{n}")}, key_type="Registry"))
    cp = providers(plugin)
    assert cp.get(ref("a.io/x/one")).secret == "p-1"  # type: ignore[union-attr]
    assert cp.get(ref("a.io/y/two")).secret == "p-1"  # type: ignore[union-attr]  # same registry
    assert cp.get(ref("b.io/x/one")).secret == "p-2"  # type: ignore[union-attr]  # another registry: a run
    assert plugin.runs == 2

    plugin.answer(auth_answer({"*.io": ("u", "p-{n}")}, key_type="Image"))
    cp = providers(plugin)
    assert cp.get(ref("a.io/x/one:1")).secret == "p-3"  # type: ignore[union-attr]
    assert cp.get(ref("a.io/x/one:2")).secret == "p-3"  # type: ignore[union-attr]
    assert cp.get(ref("a.io/y/two")).secret == "p-4"  # type: ignore[union-attr]  # another image: a run
    assert [r["request"]["image"] for r in plugin.requests()[2:]] == ["a.io/x/one", "a.io/y/two"]


def test_expiry_runs_the_plugin_again_and_uses_the_rotated_password(plugin: Plugin) -> None:
    plugin.answer(auth_answer({"reg.io": ("u", "rotated-{n}")}, duration="1s"))
    cp = providers(plugin)
    assert cp.get(ref("reg.io/a")).secret == "rotated-1"  # type: ignore[union-attr]
    assert cp.get(ref("reg.io/a")).secret == "rotated-1"  # type: ignore[union-attr]
    time.sleep(1.2)  # the answer expired: real time, a real second run
    assert cp.get(ref("reg.io/a")).secret == "rotated-2"  # type: ignore[union-attr]
    assert plugin.runs == 2


def test_default_cache_duration_and_zero(plugin: Plugin) -> None:
    clock = Clock()
    plugin.answer(auth_answer({"reg.io": ("u", "p-{n}")}, duration=None))  # no cacheDuration: the default (10m)
    cp = providers(plugin, clock=clock)
    assert cp.get(ref("reg.io/a")).secret == "p-1"  # type: ignore[union-attr]
    clock.t += 599
    assert cp.get(ref("reg.io/a")).secret == "p-1"  # type: ignore[union-attr]
    clock.t += 2
    assert cp.get(ref("reg.io/a")).secret == "p-2"  # type: ignore[union-attr]
    plugin.answer(auth_answer({"reg.io": ("u", "p-{n}")}, duration="0s"))  # 0: never cached
    cp = providers(plugin, clock=clock)
    assert cp.get(ref("reg.io/a")).secret == "p-3"  # type: ignore[union-attr]
    assert cp.get(ref("reg.io/a")).secret == "p-4"  # type: ignore[union-attr]


def test_concurrent_lookups_share_one_run(plugin: Plugin) -> None:
    plugin.answer(auth_answer({"reg.io": ("u", "p-{n}")}, sleep=0.5))
    cp = providers(plugin)
    got: list[Credential | None] = []
    threads = [threading.Thread(target=lambda: got.append(cp.get(ref("reg.io/a")))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert plugin.runs == 1 and {c.secret for c in got if c} == {"p-1"} and len(got) == 8


def test_a_hung_plugin_is_killed_with_its_children(plugin: Plugin, caplog: pytest.LogCaptureFixture) -> None:
    plugin.answer(auth_answer({"reg.io": ("u", SECRET)}, sleep=30))
    [cfg] = parse_config(provider_config(plugin, ["reg.io"]), plugin.bin_dir)
    t0 = time.monotonic()
    with pytest.raises(ProviderError, match=r"timed out after 0.5s \(killed\)"):
        run_plugin(cfg, "reg.io/a", timeout=0.5)
    assert time.monotonic() - t0 < 5
    child = int((plugin.state / "child.pid").read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    # Through the source: logged, no credential, the registry client goes on without.
    cp = CredentialProviders([Provider(cfg, timeout=0.5)])
    with caplog.at_level(logging.WARNING):
        assert cp.get(ref("reg.io/a")) is None
    assert "credential provider test-plugin for reg.io/a: timed out" in caplog.text


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"raw": f"username={SECRET}"}, "response is not JSON"),
        ({"raw": "[]"}, "not a JSON object"),
        ({**auth_answer({"reg.io": ("u", SECRET)}), "kind": "Nope"}, "kind is 'Nope'"),
        (
            {**auth_answer({"reg.io": ("u", SECRET)}), "apiVersion": "credentialprovider.kubelet.k8s.io/v1beta1"},
            "apiVersion is 'credentialprovider.kubelet.k8s.io/v1beta1', not 'credentialprovider.kubelet.k8s.io/v1'",
        ),
        (auth_answer({"reg.io": ("u", SECRET)}, key_type="Pod"), "cacheKeyType is 'Pod'"),
        (auth_answer({"reg.io": ("u", SECRET)}, duration="soon"), "cacheDuration: invalid duration"),
        ({**auth_answer({}), "auth": {"reg.io": SECRET}}, "auth entry for 'reg.io' is not an object"),
        (
            {**auth_answer({"reg.io": ("u", SECRET)}), "exit": 3, "stderr": f"x\n{'e' * 500}\n"},
            "exit status 3: e{200}$",
        ),
        ({"exit": 1, "stderr": "no IMDS endpoint\n"}, "exit status 1: no IMDS endpoint$"),
    ],
)
def test_bad_answers_and_failures(plugin: Plugin, answer: dict[str, object], message: str) -> None:
    plugin.answer(answer)
    [cfg] = parse_config(provider_config(plugin, ["reg.io"]), plugin.bin_dir)
    with pytest.raises(ProviderError, match=message) as e:
        run_plugin(cfg, "reg.io/a")
    assert SECRET not in str(e.value)  # stdout never reaches a message


def test_failures_are_remembered_briefly_then_retried(plugin: Plugin, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    plugin.answer({"exit": 1, "stderr": "metadata service down"})
    cp = providers(plugin, clock=clock)
    with caplog.at_level(logging.WARNING):
        assert cp.get(ref("reg.io/a")) is None
        assert cp.get(ref("reg.io/a")) is None  # within the failure TTL: not run again
    assert plugin.runs == 1
    assert caplog.text.count("exit status 1: metadata service down") == 1  # one warning per failed run
    plugin.answer(auth_answer({"reg.io": ("u", SECRET)}))
    clock.t += 5.1
    assert cp.get(ref("reg.io/a")) == Credential("u", SECRET)
    assert plugin.runs == 2
    assert SECRET not in caplog.text


def test_providers_in_config_order_and_the_cri_keychain_first(tmp_path: Path) -> None:
    first, second = (
        Plugin(tmp_path / "bin", tmp_path / "s1", "first"),
        Plugin(tmp_path / "bin", tmp_path / "s2", "second"),
    )
    first.answer(auth_answer({"reg.io/team": ("first", "p1")}))
    second.answer(auth_answer({"*.io": ("second", "p2")}))
    cfg = provider_config(first, ["reg.io"])
    cfg["providers"] += provider_config(second, ["*.io"])["providers"]
    cp = CredentialProviders([Provider(c) for c in parse_config(cfg, tmp_path / "bin")])
    assert cp.get(ref("reg.io/team/app")).username == "first"  # type: ignore[union-attr]
    assert second.runs == 0
    assert cp.get(ref("reg.io/ops/app")).username == "second"  # type: ignore[union-attr]  # first had no match
    assert cp.get(ref("other.io/ops/app")).username == "second"  # type: ignore[union-attr]

    kc = Keychain(keyring=None)
    kc.add("reg.io/team/app:1", Credential("from-pull", "imagePullSecret"))
    chain = CredentialChain([kc, cp])
    assert chain.keychain is kc
    assert chain.get(ref("reg.io/team/app:2")).username == "from-pull"  # type: ignore[union-attr]
    assert chain.get(ref("reg.io/team/web:2")).username == "first"  # type: ignore[union-attr]
    assert chain.get(ref("example.com/x")) is None


def test_plugin_environment_is_the_daemons_plus_the_configs(plugin: Plugin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGIN_MARK", "from-daemon")
    plugin.answer(auth_answer({"reg.io": ("u", "p")}))
    providers(plugin).get(ref("reg.io/a"))
    assert plugin.requests()[-1]["mark"] == "from-daemon"
    assert os.environ["PLUGIN_MARK"] == "from-daemon"
