"""Leftovers of a benchmark node: its processes, its layer servers (which outlive the
daemon by design), and the mounts under its root."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path


def stop_processes(*procs: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM each, SIGKILL what has not exited 20 s later."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def remove_node(root: Path) -> None:
    """A node's layer servers, then every mount under *root* (deepest first), then *root*."""
    kill_layer_servers(root)
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if line.split()[4].startswith(str(root))]
    for m in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def kill_layer_servers(root: Path) -> None:
    """SIGTERM every layer server whose command line names *root*."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"lazypull.service.fsd" in cmd and str(root).encode() in cmd:
                try:
                    os.kill(int(pid), signal.SIGTERM)
                except ProcessLookupError:
                    pass
