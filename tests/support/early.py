"""Long checks that only wait on the network and on a chroot of their own, started when the
session's collection ends and run beside every other test; their tests only collect the result.

The stock-Debian check is most of the suite's wall time yet shares nothing with the other
tests but the CPU, so the suite's time is the longer of the two, not their sum.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest


@dataclass
class Check:
    """A command run in its own process group (a timeout ends all it started)."""

    args: Sequence[str]
    timeout: float
    done: threading.Event = field(default_factory=threading.Event)
    result: subprocess.CompletedProcess[str] | None = None
    proc: subprocess.Popen[str] | None = None
    timed_out: bool = False

    def run(self) -> subprocess.CompletedProcess[str]:
        try:
            self.proc = subprocess.Popen(
                list(self.args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
            )
            try:
                out, _ = self.proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self.timed_out = True
                self.stop()
                out, _ = self.proc.communicate()
            self.result = subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, "")
            return self.result
        finally:
            self.done.set()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


_checks: dict[str, Check] = {}
_runner: threading.Thread | None = None


def start(checks: dict[str, Check]) -> None:
    """Run *checks* one after another in a background thread (one at a time: each is heavy)."""
    global _runner
    if _runner is not None:
        return
    _checks.update(checks)

    def run_all() -> None:
        for check in checks.values():
            check.run()

    _runner = threading.Thread(target=run_all, name="early-checks", daemon=True)
    _runner.start()


def outcome(name: str, check: Check) -> subprocess.CompletedProcess[str]:
    """The check's result: from the background run if one was started, else run now."""
    started = _checks.get(name)
    if started is None:
        started = check
        started.run()
    else:
        started.done.wait()
    if started.timed_out:
        out = started.result.stdout if started.result else ""
        pytest.fail(f"{name} exceeded {started.timeout:.0f} s:\n{out[-4000:]}")
    assert started.result is not None
    return started.result


def stop_all() -> None:
    for check in _checks.values():
        check.stop()
