"""The layer server's fd holder where systemd does not run it (the daemon started it, or a
container without systemd): a small parent process that does for the server what its unit
does under systemd, through the same protocol, so the server has one code path for both.

It gives the server a ``NOTIFY_SOCKET`` of its own and keeps what the server stores there
(``FDSTORE=1``/``FDNAME=``: each layer's /dev/fuse connection; ``FDSTOREREMOVE=1``). When
the server dies (a signal, or a failure exit once it was ready) it starts a new one with the
stored fds (``LISTEN_FDS``/``LISTEN_FDNAMES``), which re-attaches every layer: nobody else
has to hold a copy, not even the daemon. ``MAINPID=`` follows a successor started by the
server (``--takeover`` on SIGHUP), which becomes the holder's child as a subreaper. A clean
exit of the server (stop, ``shutdown``, another server already serving the root) ends the
holder too. One holder per root (``ROOT/fdholder.lock``): a second one exits at once.

It imports nothing of the server (a few MB, no threads) and does nothing but this, so the
server's faults are not its faults.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from lazypull.fs.fsdclient import HOLDER_LOCK_FILE as LOCK_FILE
from lazypull.service.notify import raise_fd_limit

log = logging.getLogger("lazypull.fdholder")

RESTART_SEC = 0.1  # as the unit's RestartSec
MAX_RESTART_SEC = 5.0  # a server that keeps failing is started at most this often
PR_SET_CHILD_SUBREAPER = 36
_CREDS = struct.Struct("iII")  # struct ucred: pid, uid, gid


class Holder:
    def __init__(self, root: Path, server_argv: list[str]) -> None:
        self.root = root
        self.server_argv = server_argv
        self.store: dict[str, int] = {}  # FDNAME -> the connection (one per layer)
        self.main = 0  # the server process (MAINPID)
        self.ready = False  # a server of ours said READY=1 at least once
        self.quitting = False
        self.restarts = 0  # in a row: a server that ran a while resets it
        self.started = 0.0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.address = f"@lazypull-fdholder-{os.getpid()}-{os.urandom(6).hex()}"
        self.sock.bind("\0" + self.address[1:])

    # -- the server --------------------------------------------------------------------------
    def start(self) -> None:
        names = sorted(self.store)
        fds = [self.store[n] for n in names]
        pid = os.fork()
        if pid == 0:  # the child: stored fds at 3.., as systemd passes them
            try:
                high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + len(fds)) for fd in fds]
                for i, fd in enumerate(high):
                    os.dup2(fd, 3 + i)  # inheritable
                env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_SOCKET"))}
                env["NOTIFY_SOCKET"] = self.address
                if fds:
                    env.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=":".join(names))
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                os.execve(sys.executable, self.server_argv, env)
            finally:
                os._exit(127)
        self.main, self.started = pid, time.monotonic()
        log.info("layer server started (pid %d) with %d layers' connections", pid, len(fds))

    def forward(self, sig: int) -> None:
        if self.main:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.main, sig)

    # -- notifications -----------------------------------------------------------------------
    def receive(self) -> None:
        while True:
            try:
                data, anc, _flags, _ = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(253 * 4) + socket.CMSG_SPACE(_CREDS.size), socket.MSG_DONTWAIT
                )
            except (BlockingIOError, InterruptedError):
                return
            fds: list[int] = []
            uid = -1
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds += list(struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) // 4 * 4]))
                elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    _pid, uid, _gid = _CREDS.unpack(payload[: _CREDS.size])
            for fd in fds:
                os.set_inheritable(fd, False)
            if uid != os.getuid():  # only our own user's processes (root: the server) may store
                self._close(fds)
                continue
            self.handle(data.decode(errors="replace"), fds)

    def handle(self, msg: str, fds: list[int]) -> None:
        fields = dict(line.split("=", 1) for line in msg.splitlines() if "=" in line)
        name = fields.get("FDNAME", "stored")
        if fields.get("FDSTORE") == "1" and fds:
            old = self.store.get(name)
            self.store[name] = fds.pop(0)
            if old is not None:
                os.close(old)
        if fields.get("FDSTOREREMOVE") == "1":
            old = self.store.pop(name, None)
            if old is not None:
                os.close(old)
        if fields.get("MAINPID", "").isdigit():
            self.main = int(fields["MAINPID"])
        if fields.get("READY") == "1":
            self.ready = True
        self._close(fds)

    @staticmethod
    def _close(fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)

    # -- the loop ------------------------------------------------------------------------------
    def reap(self) -> int | None:
        """Reap every ended child; the main one's wait status if it ended (None if not)."""
        status = None
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return status
            if pid == 0:
                return status
            if pid == self.main:
                self.main, status = 0, st

    def run(self) -> int:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        def quit_on(sig: int, _frame: object) -> None:
            self.quitting = True
            self.forward(sig)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, quit_on)
        signal.signal(signal.SIGHUP, lambda s, _f: self.forward(s))  # an upgrade: the server's own
        self.start()
        poll = select.poll()
        poll.register(self.sock, select.POLLIN)
        poll.register(wake_r, select.POLLIN)
        while True:
            with contextlib.suppress(InterruptedError):
                poll.poll(1000)
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
            self.receive()
            st = self.reap()
            if st is None and self.main and not _is_child(self.main) and not _alive(self.main):
                self.main, st = 0, signal.SIGKILL  # not our child (a successor started by hand): gone
            if st is None or self.main:
                continue
            code = os.waitstatus_to_exitcode(st)
            if self.quitting or code == 0 or not self.ready:
                log.info("layer server exited (%s); the fd holder ends with it", _how(code))
                self.receive()  # FDSTOREREMOVE sent just before the exit
                if not self.store:  # nothing left to serve: no state behind (as the server leaves none)
                    (self.root / LOCK_FILE).unlink(missing_ok=True)
                self._close(list(self.store.values()))
                return 0 if self.quitting or code == 0 else (code if code > 0 else 128 - code)
            if time.monotonic() - self.started > 10 * MAX_RESTART_SEC:
                self.restarts = 0
            delay = min(RESTART_SEC * 2 ** min(self.restarts, 6), MAX_RESTART_SEC)
            log.warning("layer server died (%s); a new one gets its %d layers", _how(code), len(self.store))
            self.restarts += 1
            time.sleep(delay)
            if self.quitting:
                self._close(list(self.store.values()))
                return 0
            self.start()
            self.ready = True  # it was ready before: a new one failing at its start is retried, the fds kept


def _is_child(pid: int) -> bool:
    """Ours to wait for (its end, even a clean one, comes with SIGCHLD)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid()
    except (OSError, IndexError, ValueError):
        return False


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _how(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"status {code}"


def set_subreaper() -> None:
    """Orphans below us (a successor whose predecessor retired) become our children."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def main(argv: list[str] | None = None) -> int:
    """``python -m lazypull.service.fdholder FSD-ARGS...``: run ``lazypull-fsd FSD-ARGS`` under a holder."""
    args = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--root", required=True)
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-file", default="")  # the holder's and its servers' (else stdout, stderr)
    known, _ = p.parse_known_args(args)
    if known.log_file:
        i = args.index("--log-file")
        args = args[:i] + args[i + 2 :]
        out = os.open(known.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
    logging.basicConfig(
        level=getattr(logging, str(known.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    root = Path(known.root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        log.info("an fd holder already runs for %s", root)
        return 0
    raise_fd_limit()
    set_subreaper()
    return Holder(root, [sys.executable, "-m", "lazypull.service.fsd", *args]).run()


if __name__ == "__main__":
    sys.exit(main())
