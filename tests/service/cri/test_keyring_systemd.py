"""The daemon's unit as shipped (deploy/), under a real systemd: a credential its service
put in the keyring is there for the service's next start. systemd gives every start a new
session keyring (``KeyringMode=private``), so this holds only through the user keyring."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.service.cri import keyring as kr
from tests.support.systemd import Systemd, private_systemd

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[3]
UNIT = "lazypull-keyring-probe.service"
SECRET = "unit-s3cret-Pq7"
PROBE = """
import json, logging, sys
logging.basicConfig(level=logging.DEBUG)
from lazypull.registry.credentials import Credential
from lazypull.service.cri.keychain import Keychain
kc = Keychain()
if sys.argv[1] == "add":
    kc.add("127.0.0.1:5000/team/app:v1", Credential("kube", sys.argv[3]))
c = kc.get("127.0.0.1:5000/team/app:v1")
with open(sys.argv[2], "w") as f:
    json.dump({"keyring": kc.keyring is not None, "same": c is not None and c.secret == sys.argv[3]}, f)
"""


def _unit(keyring: str, probe: Path, mode: str, out: Path) -> str:
    """The daemon's shipped unit, its [Service] settings kept (sandboxing included), running the probe once."""
    text = (REPO / "deploy" / "containerd-lazypull-grpc.service").read_text()
    lines = []
    for line in text.splitlines():
        if line.startswith(("ExecStartPre=", "Restart=", "RestartSec=")):
            continue
        if line.startswith("Type="):
            line = "Type=oneshot"
        elif line.startswith("ExecStart="):
            line = f"ExecStart={sys.executable} {probe} {mode} {out} {SECRET}"
        lines.append(line)
        if line == "[Service]":
            lines.append(f"Environment=PYTHONPATH={REPO} {kr.KEYRING_ENV}={keyring}")
            lines.append(f"StandardError=append:{out.with_suffix('.log')}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[Systemd]:
    with private_systemd(tmp_path) as sd:
        yield sd


def test_credentials_outlive_a_restart_of_the_daemons_unit(systemd: Systemd, tmp_path: Path, own_keyring: str) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    for mode in ("add", "get"):
        out = tmp_path / f"{mode}.json"
        systemd.install_unit(UNIT, _unit(own_keyring, probe, mode, out))
        systemd.systemctl("start", UNIT)  # oneshot: returns when the probe has ended
        assert json.loads(out.read_text()) == {"keyring": True, "same": True}, mode
    assert SECRET not in (tmp_path / "get.json").read_text()
    assert [k for k, _ in kr.KernelKeyring(own_keyring).items()] == ["127.0.0.1:5000/team/app"]
