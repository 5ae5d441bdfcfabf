"""Talking to the layer server (``lazypull-fsd``), and starting it when nobody else does."""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import logging
import os
import select
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lazypull.errors import LazypullError
from lazypull.fs.fsdwire import MAX_FDS, recv_msg, send_msg

log = logging.getLogger("lazypull.fsd")

START_TIMEOUT = 30.0
DEFAULT_MEMORY = 64 << 20  # the layer server's memory tier, for all its layers
HANDOVER_SEC = 60.0  # a successor that took no layers by then is given up on
LAUNCHER_ENV = "LAZYPULL_FSD_LAUNCHER"
_SUN_PATH_MAX = 107
HOLDER_LOCK_FILE = "fdholder.lock"  # held by a running fd holder (lazypull.service.fdholder)


def holder_running(root: Path) -> bool:
    """Whether an fd holder runs for *root* (it restarts the server itself: start none beside it)."""
    try:
        fd = os.open(Path(root) / HOLDER_LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def is_server_process(pid: int) -> bool:
    """Whether *pid* is a layer server still running (a zombie has ended: only its parent's
    wait is missing; a reused pid runs something else)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return (b"lazypull.service.fsd" in cmd or b"lazypull-fsd" in cmd) and state != "Z"


def socket_path(root: Path) -> Path:
    """The control socket for a server rooted at *root*: ``ROOT/fsd.sock``, or, where that is
    longer than a unix socket path may be, a name derived from *root* under /run."""
    p = Path(root) / "fsd.sock"
    if len(os.fsencode(p)) <= _SUN_PATH_MAX:
        return p
    d = Path("/run/lazypull-fsd")
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d / (hashlib.sha256(os.fsencode(Path(root).resolve())).hexdigest()[:16] + ".sock")


HANDOVER_RETRY_SEC = 60.0  # how long a request waits for a handover to finish


class FsdError(LazypullError):
    pass


class FsdUnavailable(FsdError):
    """The server does not answer (not running, or wedged)."""


class FsdClient:
    def __init__(self, address: Path, timeout: float = 10.0) -> None:
        self.address = Path(address)
        self.timeout = timeout

    def call(
        self, op: str, *, fds: list[int] | None = None, timeout: float | None = None, **args: Any
    ) -> tuple[dict[str, Any], list[int]]:
        """One request; returns the reply and the fds that came with it (the caller owns them).

        A server handing over to its successor answers "retry": the request is sent again
        (to the successor, once it holds the socket) instead of failing."""
        deadline = time.monotonic() + HANDOVER_RETRY_SEC
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            s.settimeout(timeout if timeout is not None else self.timeout)
            try:
                try:
                    s.connect(str(self.address))
                    send_msg(s, {"op": op, **args}, fds)
                    reply, got = recv_msg(s)
                except (OSError, LazypullError) as e:
                    raise FsdUnavailable(f"layer server at {self.address}: {op}: {e}") from None
            finally:
                s.close()
            if "error" not in reply:
                return reply, got
            for fd in got:
                os.close(fd)
            if not reply.get("retry") or time.monotonic() > deadline:
                raise FsdError(str(reply["error"]))
            time.sleep(0.05)

    def alive(self, timeout: float = 2.0) -> dict[str, Any] | None:
        try:
            return self.call("status", timeout=timeout)[0]
        except FsdError:
            return None

    def mount(self, spec: dict[str, Any], mountpoint: Path, timeout: float) -> tuple[dict[str, Any], int]:
        """Mount a layer (or get the running mount); returns its summary and a copy of its fd."""
        reply, fds = self.call("mount", spec=spec, mountpoint=str(mountpoint), timeout=timeout)
        for extra in fds[1:]:
            os.close(extra)
        return reply["layer"], (fds[0] if fds else -1)

    def renew(self, spec: dict[str, Any], mountpoint: Path) -> bool:
        """Hand a serving layer its rotated credential; False if it is not serving here."""
        return bool(self.call("renew", spec=spec, mountpoint=str(mountpoint), timeout=10)[0]["renewed"])

    def unmount(self, mountpoint: Path, free_cache: bool = False, mount_id: str | None = None) -> list[str]:
        """Unmount the layer at *mountpoint* (with *mount_id*: only that mount instance)."""
        args: dict[str, Any] = {"mountpoint": str(mountpoint), "free_cache": free_cache}
        if mount_id:
            args["mount_id"] = mount_id
        return list(self.call("unmount", timeout=60, **args)[0]["accessed"])

    def states(self, mount_ids: list[str]) -> dict[str, str]:
        """The state of each mount instance named ("missing": not this server's)."""
        return {str(k): str(v) for k, v in self.call("states", mount_ids=mount_ids, timeout=5)[0]["states"].items()}

    def list(self) -> list[dict[str, Any]]:
        return list(self.call("list")[0]["layers"])

    def stats(self, mountpoints: builtins.list[str] | None = None, accessed: bool = False) -> dict[str, Any]:
        return self.call("stats", mountpoints=mountpoints or [], accessed=accessed, timeout=5)[0]

    def adopt(self, cache_dir: Path, max_bytes: int, digests: builtins.list[str]) -> int:
        """Have the server account for (and evict within its bound) chunks written by others."""
        return int(self.call("adopt", cache_dir=str(cache_dir), max_bytes=max_bytes, digests=digests)[0]["adopted"])

    def fds(self, mountpoints: builtins.list[str]) -> dict[str, int]:
        """Copies of the layers' FUSE fds (in batches: one message carries at most MAX_FDS)."""
        out: dict[str, int] = {}
        for i in range(0, len(mountpoints), MAX_FDS):
            reply, fds = self.call("fds", mountpoints=mountpoints[i : i + MAX_FDS])
            out.update(zip(reply["mountpoints"], fds, strict=True))
        return out

    def attach(
        self, layers: builtins.list[dict[str, Any]], fds: builtins.list[int], timeout: float = 120
    ) -> builtins.list[dict[str, Any]]:
        """Hand held connections back to a (re)started server; *fds* stay the caller's."""
        out: list[dict[str, Any]] = []
        for i in range(0, len(layers), MAX_FDS):
            batch = slice(i, i + MAX_FDS)
            out += self.call("attach", layers=layers[batch], fds=fds[batch], timeout=timeout)[0]["layers"]
        return out

    def shutdown(self, unmount_all: bool = False) -> None:
        self.call("shutdown", unmount_all=unmount_all, timeout=60)


def successor_command(flag: str = "--reload") -> list[str]:
    """This process's own command line with *flag* replaced by ``--takeover``: run by the
    reload command, that is the binary installed now, not the one the old server runs."""
    argv = [a for a in sys.orig_argv[1:] if a not in (flag, "--takeover")]
    return [sys.executable, *argv, "--takeover"]


def reload(address: Path, timeout: float = HANDOVER_SEC + 30) -> int:
    """``lazypull-fsd --reload`` (the unit's ExecReload, an upgrade): start this binary with
    --takeover beside the running server and return once it serves every layer and the old
    one has exited, so that ``systemctl reload`` (and ``try-reload-or-restart``) returns with
    the upgrade done. Imports nothing of the server: this process only starts and waits.

    The successor is in the unit's cgroup and tells systemd ``MAINPID=`` itself. Nonzero if
    no server runs or the successor fails (the old server then keeps serving)."""
    client = FsdClient(address)
    old = client.alive()
    if old is None:
        log.error("no layer server answers at %s: nothing to reload", address)
        return 1
    old_pid = int(old["pid"])
    t0 = time.monotonic()
    proc = subprocess.Popen(successor_command(), stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    log.info("reload: pid %d takes the layers over from pid %d", proc.pid, old_pid)
    # Woken by the old server's exit (its pidfd), not by asking the servers every few ms.
    waiter = select.poll()
    try:
        pidfd = os.pidfd_open(old_pid)
        waiter.register(pidfd, select.POLLIN)
    except OSError:  # gone already, or no pidfds (Linux < 5.3): asked every 20 ms
        pidfd = -1
    try:
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if pidfd >= 0:
                waiter.poll(200)
            else:
                time.sleep(0.02)
            if proc.poll() is not None:
                log.error("the successor exited (status %s); pid %s still serves", proc.returncode, old_pid)
                return 1
            if is_server_process(old_pid):
                continue
            if pidfd >= 0:
                waiter.unregister(pidfd)
                os.close(pidfd)
                pidfd = -1
            st = client.alive()
            if st is not None and st["pid"] == proc.pid:
                log.info("layer server pid %s replaced by pid %s in %.2fs", old_pid, proc.pid, time.monotonic() - t0)
                return 0
        log.error("the successor (pid %d) did not take over within %.0fs", proc.pid, timeout)
        return 1
    finally:
        if pidfd >= 0:
            os.close(pidfd)


_start_lock = threading.Lock()


def start_server(
    root: Path,
    address: Path,
    *,
    log_path: Path,
    memory_bytes: int | None = None,
    index_memory: tuple[int, int] = (0, 0),
    exit_when_idle: bool = False,
    log_level: str = "info",
) -> tuple[FsdClient, subprocess.Popen[bytes] | None]:
    """The running server at *address*, or a new detached one (its own session, so it outlives
    the caller) under an fd holder (:mod:`lazypull.service.fdholder`: it keeps the layers'
    connections and restarts the server if it dies). Returns the client and the process
    (the holder, or the launcher) if this call started it.

    ``$LAZYPULL_FSD_LAUNCHER``: a command the holder's is run by, to start it outside the
    caller's container (``{pid}`` is the caller's pid), e.g. a transient unit of the host's
    systemd entering the caller's mount namespace (deploy/kubernetes/). It may exit once it
    started the holder."""
    client = FsdClient(address)
    with _start_lock:
        if client.alive() is not None:
            return client, None
        deadline = time.monotonic() + START_TIMEOUT
        while holder_running(root):  # it starts the server again itself, with the layers' fds
            if client.alive(timeout=1.0) is not None:
                return client, None
            if time.monotonic() > deadline:
                raise FsdError(f"the fd holder of {root} started no layer server in {START_TIMEOUT}s")
            time.sleep(0.02)
        cmd = [sys.executable, "-m", "lazypull.service.fdholder", "--root", str(root), "--address", str(address)]
        cmd += ["--log-level", log_level]
        if memory_bytes is not None:
            cmd += ["--memory-bytes", str(memory_bytes)]
        if index_memory[0]:
            cmd += ["--index-memory-bytes", str(index_memory[0])]
        if index_memory[1]:
            cmd += ["--image-memory-bytes", str(index_memory[1])]
        if exit_when_idle:
            cmd.append("--exit-when-idle")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        launcher = [a.replace("{pid}", str(os.getpid())) for a in shlex.split(os.environ.get(LAUNCHER_ENV, ""))]
        if launcher:
            cmd = [*launcher, *cmd, "--log-file", str(log_path)]
        # Not the caller's systemd notifications: a server started here is not a unit's main process.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_"))}
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while client.alive(timeout=1.0) is None:
            if proc.poll() is not None and not (launcher and proc.returncode == 0):
                if client.alive() is not None:  # another starter won the race
                    return client, None
                raise FsdError(f"layer server exited at start: {_tail(log_path)}")
            if time.monotonic() > deadline:
                raise FsdError(f"layer server did not start within {START_TIMEOUT}s: {_tail(log_path)}")
            time.sleep(0.02)
        return client, proc


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    """``python3 -m lazypull.fs.fsdclient --root ROOT list|status|stats|accessed``: ask a
    running layer server (the snapshotter's: ``--root /var/lib/containerd-lazypull-grpc``)."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="lazypull-fsd-ctl", description="query a running layer server")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--root", type=Path, help="the daemon's root (its layer server's socket is ROOT/fsd.sock)")
    g.add_argument("--address", type=Path, help="the layer server's socket")
    p.add_argument("what", choices=["list", "status", "stats", "accessed"])
    args = p.parse_args(argv)
    c = FsdClient(args.address or socket_path(args.root))
    try:
        if args.what == "list":
            out: object = c.list()
        elif args.what == "status":
            out = c.call("status")[0]
        elif args.what == "stats":
            out = c.stats()
        else:  # files read through each layer, in first-read order (lazypull convert --record-in)
            for row in c.stats(accessed=True)["layers"]:
                for path in row.get("accessed", []):
                    print(json.dumps({"path": path}))
            return 0
    except FsdError as e:
        print(f"lazypull-fsd-ctl: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
