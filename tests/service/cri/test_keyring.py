"""The kubelet's credentials in the kernel keyring: written through by the keychain, taken
back by a new one (a restarted daemon), private to root, timed out, and a clean fallback to
memory where the keyring cannot be used (a seccomp filter). Real syscalls, real keyring."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lazypull.registry.credentials import Credential
from lazypull.service.cri import keyring as kr
from lazypull.service.cri.keychain import Keychain
from tests.support import seccomp

SECRET = "kube-s3cret-Wk2"
IMAGE = "127.0.0.1:5000/team/app:v1"


def _proc_keys(serial: int) -> list[str]:
    """The /proc/keys row of *serial*: serial flags usage timeout perm uid gid type description."""
    for line in Path("/proc/keys").read_text().splitlines():
        cols = line.split()
        if int(cols[0], 16) == serial:
            return cols
    raise AssertionError(f"key {serial:x} is not in /proc/keys")


def _serial(ring: kr.KernelKeyring, key: str) -> int:
    return ring._sys.keyctl(kr.KEYCTL_SEARCH, ring.ring(), b"user", (kr.PREFIX + key).encode(), 0)


def test_credentials_outlive_the_keychain(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    kc = Keychain()
    assert kc.keyring is not None
    kc.add(IMAGE, Credential("kube", SECRET))
    kc.add("127.0.0.1:5000/team/tool:v1", Credential("id", "refresh-tok", identity_token=True))
    again = Keychain()  # a restarted daemon: nothing in its memory yet
    c = again.get("127.0.0.1:5000/team/app@sha256:" + "a" * 64)
    assert c is not None and (c.username, c.secret, c.identity_token) == ("kube", SECRET, False)
    t = again.get("127.0.0.1:5000/team/tool:v2")
    assert t is not None and t.identity_token and t.secret == "refresh-tok"
    assert "credentials for 127.0.0.1:5000/team/app restored from the kernel keyring" in caplog.text
    assert SECRET not in caplog.text and "refresh-tok" not in caplog.text
    kc.add(IMAGE, Credential("kube", "rotated"))  # a later PullImage replaces it
    latest = Keychain().get(IMAGE)
    assert latest is not None and latest.secret == "rotated"


def test_keys_are_private_and_time_out() -> None:
    ring = kr.KernelKeyring(ttl=3600)
    ring.put("reg/team/app", Credential("kube", SECRET))
    cols = _proc_keys(_serial(ring, "reg/team/app"))
    assert int(cols[4], 16) == kr.PERM  # possessor and root only: no group, no others
    assert int(cols[4], 16) & 0xFFFF == 0
    assert cols[7] == "user" and cols[8].startswith("lazypull:cred:reg/team/app")
    assert cols[3] in ("59m", "1h")  # a timeout, not "perm"
    assert SECRET not in Path("/proc/keys").read_text()
    short = kr.KernelKeyring(ttl=1)
    short.put("reg/team/short", Credential("kube", SECRET))
    assert short.get("reg/team/short") is not None
    time.sleep(1.5)
    assert short.get("reg/team/short") is None
    assert [k for k, _ in ring.items()] == ["reg/team/app"]


def test_keys_last_while_the_daemon_keeps_them_and_time_out_after() -> None:
    """The timeout runs from the daemon's last renewal: a credential in use never times out
    under a running daemon, and one left by a stopped daemon does."""
    kc = Keychain(keyring=kr.KernelKeyring(ttl=2))  # renewed every 0.5 s
    kc.add(IMAGE, Credential("kube", SECRET))
    time.sleep(3)
    assert Keychain(keyring=kr.KernelKeyring(ttl=2)).get(IMAGE) is not None
    del kc  # the daemon stopped
    time.sleep(3)
    assert kr.KernelKeyring().items() == [] and Keychain().get(IMAGE) is None


def test_a_keyring_cleared_by_hand_is_written_anew() -> None:
    kc = Keychain(keyring=kr.KernelKeyring(ttl=3600))
    kc.add(IMAGE, Credential("kube", SECRET))
    kr.KernelKeyring().clear()  # keyctl invalidate by an operator
    kc.renew()
    assert [k for k, _ in kr.KernelKeyring().items()] == ["127.0.0.1:5000/team/app"]
    kr.KernelKeyring().clear()
    kc.add("127.0.0.1:5000/team/tool:v1", Credential("kube", SECRET))
    assert kc.keyring is not None and len(kr.KernelKeyring().items()) == 1


def test_forgotten_images_leave_the_keyring() -> None:
    kc = Keychain(max_entries=2)
    for name in ("a", "b", "c"):
        kc.add(f"127.0.0.1:5000/team/{name}:v1", Credential("kube", SECRET))
    assert kc.keyring is not None
    assert sorted(k for k, _ in kc.keyring.items()) == ["127.0.0.1:5000/team/b", "127.0.0.1:5000/team/c"]
    kc.keyring.clear()
    assert kr.KernelKeyring().items() == []  # cleared: a new keyring, empty


SESSION_CHILD = """
import sys
from lazypull.registry.credentials import Credential
from lazypull.service.cri import keyring as kr
from lazypull.service.cri.keychain import Keychain
kr._Syscalls().keyctl(1, None)  # KEYCTL_JOIN_SESSION_KEYRING: a new anonymous one, as systemd gives a service
kc = Keychain()
if sys.argv[1] == "add":
    kc.add("127.0.0.1:5000/team/app:v1", Credential("kube", sys.argv[2]))
c = kc.get("127.0.0.1:5000/team/app:v2")
print(kc.keyring is not None and c is not None and c.secret == sys.argv[2])
"""


def test_a_process_that_does_not_possess_the_keyring_still_uses_it() -> None:
    """A service's private session keyring does not reach the user keyring: the daemon does not
    possess the keys there, yet each start finds the credentials of the one before."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])}
    for mode in ("add", "get"):
        res = subprocess.run(
            [sys.executable, "-c", SESSION_CHILD, mode, SECRET], capture_output=True, text=True, env=env, timeout=60
        )
        assert res.stdout.strip() == "True", (mode, res.stderr)
        assert SECRET not in res.stderr


CHILD = """
import json, logging, sys
from tests.support.seccomp import deny_keyring
if sys.argv[2] == "before":
    deny_keyring()
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from lazypull.registry.credentials import Credential
from lazypull.service.cri.keychain import Keychain
kc = Keychain()
if sys.argv[2] == "after":
    deny_keyring()
kc.add("127.0.0.1:5000/team/app:v1", Credential("kube", sys.argv[1]))
kc.add("127.0.0.1:5000/team/tool:v1", Credential("kube", sys.argv[1]))
c = kc.get("127.0.0.1:5000/team/app:v2")
print(json.dumps({"keyring": kc.keyring is not None, "secret": c.secret if c else None}))
"""


@pytest.mark.skipif(not seccomp.supported(), reason="no seccomp filter for this architecture")
@pytest.mark.parametrize("denied", ["before", "after"])
def test_without_a_keyring_credentials_stay_in_memory(denied: str) -> None:
    """Where seccomp denies the keyring (as in a container), from the start or from some point
    on, the keychain says so once and keeps working from memory."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])}
    res = subprocess.run(
        [sys.executable, "-c", CHILD, SECRET, denied], capture_output=True, text=True, env=env, timeout=60, check=True
    )
    assert json.loads(res.stdout) == {"keyring": False, "secret": SECRET}
    said = {
        "before": "kernel keyring is not usable here (Operation not permitted)",
        "after": "the kernel keyring failed (Operation not permitted)",
    }[denied]
    assert res.stderr.count(said) == 1, res.stderr
    assert "in memory only" in res.stderr and SECRET not in res.stderr
    assert kr.KernelKeyring().items() == []  # nothing reached this test's keyring
