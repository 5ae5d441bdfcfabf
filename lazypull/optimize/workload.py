"""Run an image's workload once in a real container (runc), on a rootfs that is already mounted.

The command, environment, working directory and user come from the image config, as a
container runtime would take them, with the overrides ``ctr-remote image optimize`` has
(entrypoint and args as JSON arrays, extra env, cwd).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazypull.errors import LazypullError

log = logging.getLogger(__name__)

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Docker's default capability set: what an ordinary container gets.
DEFAULT_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]


def json_list(text: str | None, what: str) -> list[str] | None:
    """``--entrypoint``/``--args`` take JSON arrays of strings, as in the reference tool."""
    if text is None:
        return None
    try:
        val = json.loads(text)
    except ValueError:
        raise LazypullError(f'{what} must be a JSON array of strings, e.g. \'["/bin/sh", "-c"]\'') from None
    if not isinstance(val, list) or not all(isinstance(v, str) for v in val):
        raise LazypullError(f"{what} must be a JSON array of strings")
    return val


@dataclass
class Workload:
    """What to run, after the image config and the user's overrides are merged."""

    args: list[str]
    env: list[str]
    cwd: str = "/"
    user: str = ""
    network: str = "none"  # "none": own network namespace (loopback only); "host": the node's

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any],
        *,
        entrypoint: list[str] | None = None,
        args: list[str] | None = None,
        env: list[str] | None = None,
        cwd: str | None = None,
        network: str = "none",
    ) -> Workload:
        c = config.get("config") or {}
        # Docker semantics: a new entrypoint drops the image's Cmd unless args are given too.
        ep = entrypoint if entrypoint is not None else list(c.get("Entrypoint") or [])
        cmd = args if args is not None else ([] if entrypoint is not None else list(c.get("Cmd") or []))
        argv = ep + cmd
        if not argv:
            raise LazypullError("the image has no Entrypoint or Cmd; give --entrypoint/--args")
        merged = {e.split("=", 1)[0]: e for e in list(c.get("Env") or [DEFAULT_PATH])}
        for e in env or []:
            if "=" not in e:
                raise LazypullError(f"--env {e!r}: expected KEY=VALUE")
            merged[e.split("=", 1)[0]] = e
        merged.setdefault("PATH", DEFAULT_PATH)
        if network not in ("none", "host"):
            raise LazypullError(f"--network {network!r}: expected none or host")
        return cls(
            args=argv,
            env=list(merged.values()),
            cwd=cwd or c.get("WorkingDir") or "/",
            user=str(c.get("User") or ""),
            network=network,
        )


def _lookup(db: Path, name: str, field_no: int) -> int:
    """Resolve a user or group name through the image's /etc/passwd or /etc/group."""
    if name.isdigit():
        return int(name)
    try:
        for line in db.read_text(errors="replace").splitlines():
            parts = line.split(":")
            if len(parts) > field_no and parts[0] == name and parts[field_no].isdigit():
                return int(parts[field_no])
    except OSError:
        pass
    raise LazypullError(f"user or group {name!r} is not in the image's {db.name}")


def resolve_user(rootfs: Path, user: str) -> tuple[int, int]:
    if not user:
        return 0, 0
    name, _, group = user.partition(":")
    uid = _lookup(rootfs / "etc/passwd", name, 2)
    if group:
        gid = _lookup(rootfs / "etc/group", group, 2)
    elif name.isdigit():
        gid = 0
    else:
        gid = _lookup(rootfs / "etc/passwd", name, 3)
    return uid, gid


@dataclass
class RuntimeSpec:
    """An OCI runtime config.json for the workload, close to what containerd generates."""

    workload: Workload
    rootfs: Path
    hostname: str = "lazypull-optimize"

    def _mounts(self) -> list[dict[str, Any]]:
        mounts = [
            _mount("/proc", "proc", "proc"),
            _mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
            _mount("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"),
            _mount("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
            _mount("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
            _mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
        ]
        if self.workload.network == "host" and (self.rootfs / "etc").is_dir():
            mounts.append(_mount("/etc/resolv.conf", "bind", "/etc/resolv.conf", "rbind", "ro"))
        return mounts

    def to_json(self) -> dict[str, Any]:
        w = self.workload
        uid, gid = resolve_user(self.rootfs, w.user)
        namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
        if w.network == "none":
            namespaces.append({"type": "network"})
        caps = list(DEFAULT_CAPS)
        return {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": uid, "gid": gid},
                "args": w.args,
                "env": w.env,
                "cwd": w.cwd,
                "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": True,
            },
            "root": {"path": str(self.rootfs), "readonly": False},
            "hostname": self.hostname,
            "mounts": self._mounts(),
            "linux": {
                "namespaces": namespaces,
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
            },
        }


def _mount(dest: str, kind: str, source: str, *options: str) -> dict[str, Any]:
    return {"destination": dest, "type": kind, "source": source, "options": list(options)}


@dataclass
class RunResult:
    exit_code: int | None  # None: still running at the end of the period, then killed
    seconds: float


def run_workload(spec: RuntimeSpec, bundle: Path, period: float, *, runc: str = "runc") -> RunResult:
    """Run the workload until it exits or *period* seconds pass (then kill it, as the reference does).

    Its output goes to our stderr, so the user sees what it did and stdout stays parseable.
    """
    bundle.mkdir(parents=True, exist_ok=True, mode=0o700)
    (bundle / "config.json").write_text(json.dumps(spec.to_json()))
    state_root = bundle / "runc"
    cid = f"lazypull-optimize-{uuid.uuid4().hex[:12]}"
    base = [runc, "--root", str(state_root)]
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            [*base, "run", "--bundle", str(bundle), cid], stdin=subprocess.DEVNULL, stdout=sys.stderr
        )
    except FileNotFoundError:
        raise LazypullError(f"{runc} not found: optimize runs the workload with runc") from None
    try:
        code: int | None = proc.wait(timeout=period)
        log.info("workload exited with %s after %.1fs", code, time.monotonic() - t0)
    except subprocess.TimeoutExpired:
        code = None
        log.info("workload still running after %.0fs: stopping it", period)
        subprocess.run([*base, "kill", cid, "KILL"], capture_output=True)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: do not leave the container behind
            subprocess.run([*base, "kill", cid, "KILL"], capture_output=True)
            proc.wait()
        subprocess.run([*base, "delete", "--force", cid], capture_output=True)
    if code is not None and code != 0:
        log.warning("workload exited with status %d; its file accesses are recorded anyway", code)
    return RunResult(code, time.monotonic() - t0)
