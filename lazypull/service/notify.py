"""systemd's sd_notify protocol: one datagram to $NOTIFY_SOCKET (abstract if it starts with '@')."""

from __future__ import annotations

import os
import socket


def sd_notify(state: str) -> bool:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError:
        return False


def sd_notify_fds(state: str, fds: list[int]) -> bool:
    """sd_notify with file descriptors (``FDSTORE=1``: systemd keeps copies across restarts)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or not fds:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            socket.send_fds(s, [state.encode()], fds)
        return True
    except OSError:
        return False


def listen_fds() -> dict[str, list[int]]:
    """File descriptors systemd passed to this process (``LISTEN_FDS``), by ``FDNAME``."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return {}
    n = int(os.environ.get("LISTEN_FDS", "0") or 0)
    names = (os.environ.get("LISTEN_FDNAMES") or "").split(":")
    out: dict[str, list[int]] = {}
    for i in range(n):
        fd = 3 + i
        os.set_inheritable(fd, False)
        out.setdefault(names[i] if i < len(names) else "unknown", []).append(fd)
    for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(k, None)
    return out


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one: every mounted layer holds /dev/fuse
    fds (the layer server two, the daemon one), so 1,000 layers exceed the usual 1,024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            pass
    return soft
