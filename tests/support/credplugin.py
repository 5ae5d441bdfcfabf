"""A real kubelet credential provider plugin for the tests: an executable speaking the exec
protocol (request JSON on stdin, response JSON on stdout), driven by files in a state dir.

``answer.json`` in the state dir is its response, except that ``{n}`` in a password becomes
the number of this run (so each run after an expiry hands out a rotated password), and a
few test-only keys change its behaviour: ``sleep`` (seconds before answering, after starting
a grandchild that sleeps as long, whose pid goes to ``child.pid``), ``exit`` (status),
``stderr`` (text), ``raw`` (stdout as is). Every run appends its request, args and
``$PLUGIN_MARK`` to ``requests.jsonl``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SCRIPT = """#!{python}
import json, os, subprocess, sys, time
state = os.environ["PLUGIN_STATE"]
req = json.loads(sys.stdin.read())
with open(os.path.join(state, "requests.jsonl"), "a") as f:
    f.write(json.dumps({{"request": req, "args": sys.argv[1:], "mark": os.environ.get("PLUGIN_MARK")}}) + "\\n")
n = sum(1 for _ in open(os.path.join(state, "requests.jsonl")))
answer = json.load(open(os.path.join(state, "answer.json")))
if answer.get("sleep"):
    child = subprocess.Popen(["sleep", str(answer["sleep"])])
    open(os.path.join(state, "child.pid"), "w").write(str(child.pid))
    time.sleep(answer["sleep"])
if answer.get("stderr"):
    sys.stderr.write(answer["stderr"])
if "raw" in answer:
    sys.stdout.write(answer["raw"])
else:
    resp = {{k: v for k, v in answer.items() if k not in ("sleep", "exit", "stderr")}}
    resp.setdefault("kind", "CredentialProviderResponse")
    resp.setdefault("apiVersion", req["apiVersion"])
    for entry in resp.get("auth", {{}}).values():
        if isinstance(entry, dict) and isinstance(entry.get("password"), str):
            entry["password"] = entry["password"].replace("{{n}}", str(n))
    json.dump(resp, sys.stdout)
sys.exit(answer.get("exit", 0))
"""


class Plugin:
    def __init__(self, bin_dir: Path, state: Path, name: str = "test-plugin") -> None:
        self.bin_dir, self.state, self.name = bin_dir, state, name
        bin_dir.mkdir(parents=True, exist_ok=True)
        state.mkdir(parents=True, exist_ok=True)
        exe = bin_dir / name
        exe.write_text(SCRIPT.format(python=sys.executable))
        exe.chmod(0o755)
        self.answer({})

    def answer(self, answer: dict[str, Any]) -> None:
        tmp = self.state / "answer.json.tmp"
        tmp.write_text(json.dumps(answer))
        tmp.replace(self.state / "answer.json")  # a running plugin never reads half a file

    def requests(self) -> list[dict[str, Any]]:
        p = self.state / "requests.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []

    @property
    def runs(self) -> int:
        return len(self.requests())


def auth_answer(
    entries: dict[str, tuple[str, str]], key_type: str = "Image", duration: str | None = "1h", **extra: Any
) -> dict[str, Any]:
    a: dict[str, Any] = {
        "cacheKeyType": key_type,
        "auth": {k: {"username": u, "password": p} for k, (u, p) in entries.items()},
        **extra,
    }
    if duration is not None:
        a["cacheDuration"] = duration
    return a


def provider_config(plugin: Plugin, match: list[str], default_cache: str = "10m", **extra: Any) -> dict[str, Any]:
    """A kubelet CredentialProviderConfig (as a mapping) with *plugin* as its one provider."""
    prov: dict[str, Any] = {
        "name": plugin.name,
        "matchImages": match,
        "defaultCacheDuration": default_cache,
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "env": [{"name": "PLUGIN_STATE", "value": str(plugin.state)}],
        **extra,
    }
    return {"apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig", "providers": [prov]}
