"""Small helpers for tests that start real servers on loopback."""

from __future__ import annotations

import socket

from lazypull.polling import wait_for

__all__ = ["free_port", "port_open", "wait_for"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
