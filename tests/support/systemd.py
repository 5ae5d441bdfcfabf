"""A real systemd (the machine's own) as PID 1 of private PID and mount namespaces.

For tests of what only systemd does (the fd store across restarts, ``Type=notify``,
``MAINPID=`` hand-over, ``systemctl reload``): the units run for real, contained, and
vanish with the namespace. Mounts made by its services live in its mount namespace, so
files under them are read through :meth:`Systemd.run` (nsenter).

It shares the machine's filesystems, so it must boot nothing but the units under test:
early-boot units would act on the real machine (``systemd-tmpfiles --remove`` empties
/tmp). They are masked, units are installed with ``DefaultDependencies=no``, and
:meth:`Systemd.running_services` lets a test check that nothing else started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SYSTEMD = "/lib/systemd/systemd"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# Units that act on the machine at boot; masked so that nothing pulls them in.
MASKED = (
    "sysinit.target",
    "basic.target",
    "local-fs.target",
    "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-setup-dev-early.service",
    "systemd-tmpfiles-clean.service",
    "systemd-tmpfiles-clean.timer",
    "systemd-sysctl.service",
    "systemd-modules-load.service",
    "systemd-binfmt.service",
    "systemd-remount-fs.service",
    "systemd-random-seed.service",
    "systemd-update-utmp.service",
    "systemd-journald.service",
    "systemd-journald.socket",
    "systemd-journald-dev-log.socket",
    "systemd-journal-flush.service",
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
    "tmp.mount",
)
_BOOT = """#!/bin/sh
set -e
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/systemd/system
for u in {masked}; do ln -s /dev/null /run/systemd/system/$u; done
T=/run/systemd/system/lazypull-test.target
printf '[Unit]\\nDescription=lazypull test target\\nDefaultDependencies=no\\n' > $T
mount -t proc proc /proc
exec env container=lazypull-test {systemd} --system --unit=lazypull-test.target --log-target=console
"""


def shipped_unit(name: str, replace: Mapping[str, str], log: Path) -> str:
    """The unit *name* of deploy/ as a test runs it: each string of *replace* replaced, in
    order (the installed paths by the test's), and its output appended to *log*; nothing
    else changed. A string the unit no longer has fails the test: it would test another unit."""
    text = (DEPLOY / name).read_text()
    for old, new in replace.items():
        assert old in text, f"deploy/{name} no longer has {old!r}"
        text = text.replace(old, new)
    out = []
    for line in text.splitlines():
        out.append(line)
        if line == "[Service]":
            out += [f"StandardOutput=append:{log}", f"StandardError=append:{log}"]
    return "\n".join(out) + "\n"


@dataclass
class Systemd:
    pid: int  # PID 1 of the namespace, as the host sees it
    log: Path

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A command inside systemd's namespaces (its mounts, its PIDs)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", *cmd],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def popen(self, *cmd: str, **kw: object) -> subprocess.Popen[bytes]:
        """A long-running command inside systemd's namespaces (a reader of its mounts)."""
        return subprocess.Popen(["nsenter", "-t", str(self.pid), "-m", "-p", *cmd], **kw)  # type: ignore[call-overload]

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.run("systemctl", "--no-pager", *args, check=check).stdout.strip()

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", unit)

    def install_unit(self, name: str, text: str) -> None:
        """*text* with ``DefaultDependencies=no``: it must not pull in the machine's boot."""
        text = text.replace("[Unit]\n", "[Unit]\nDefaultDependencies=no\n", 1)
        assert "DefaultDependencies=no" in text, "a unit to install needs a [Unit] section"
        subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "sh", "-c", f"cat > /run/systemd/system/{name}"],
            input=text,
            text=True,
            check=True,
        )
        self.systemctl("daemon-reload")

    def running_services(self) -> list[str]:
        out = self.systemctl("list-units", "--type=service,socket,timer", "--state=active", "--plain", "--no-legend")
        return [line.split()[0] for line in out.splitlines() if line.strip()]


@contextmanager
def private_systemd(tmp: Path) -> Iterator[Systemd]:
    if not os.path.exists(SYSTEMD) or not shutil.which("nsenter"):
        raise RuntimeError(f"{SYSTEMD} and nsenter are needed (Debian: systemd, util-linux)")
    boot = tmp / "systemd-boot.sh"
    boot.write_text(_BOOT.format(systemd=SYSTEMD, masked=" ".join(MASKED)))
    boot.chmod(0o755)
    log = tmp / "systemd.log"
    with log.open("w") as out:
        unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount", "--uts", "--propagation", "private", str(boot)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    sd = None
    try:
        deadline = time.monotonic() + 30
        while sd is None:
            assert unshare.poll() is None, f"systemd did not start: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "systemd did not start in 30 s"
            pid = _child_of(unshare.pid)
            if pid and Path(f"/proc/{pid}/exe").resolve().name == "systemd":
                candidate = Systemd(pid, log)
                state = candidate.systemctl("is-system-running", check=False)
                if state in ("running", "degraded"):
                    sd = candidate
                    break
            time.sleep(0.1)
        yield sd
    finally:
        if unshare.poll() is None:
            pid = _child_of(unshare.pid)
            if pid:
                os.kill(pid, signal.SIGKILL)  # PID 1 of the namespace: everything in it ends
            unshare.wait(30)


def _child_of(pid: int) -> int:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0
    return int(kids[0]) if kids else 0
