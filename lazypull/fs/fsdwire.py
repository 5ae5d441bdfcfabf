"""The layer server's control protocol on its unix socket: one JSON request, one JSON reply.

Each message is a 4-byte big-endian length and a JSON object; file descriptors (the FUSE
connections handed between the server and whoever holds copies) travel with a message as
SCM_RIGHTS ancillary data, at most :data:`MAX_FDS` per message.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from lazypull.errors import LazypullError

MAX_FDS = 250  # below the kernel's SCM_MAX_FD (253)
MAX_MSG = 64 << 20
_LEN = struct.Struct(">I")


class WireError(LazypullError):
    pass


def send_msg(sock: socket.socket, obj: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    frame = _LEN.pack(len(data)) + data
    if fds:
        if len(fds) > MAX_FDS:
            raise WireError(f"too many file descriptors in one message ({len(fds)})")
        n = socket.send_fds(sock, [frame], fds)
        frame = frame[n:]
    if frame:
        sock.sendall(frame)


def recv_msg(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(sock, 65536, MAX_FDS)
    buf = bytearray(data)
    if not buf:
        raise WireError("connection closed")
    while len(buf) < _LEN.size:
        more = sock.recv(65536)
        if not more:
            raise WireError("connection closed mid-message")
        buf += more
    (n,) = _LEN.unpack_from(buf)
    if n > MAX_MSG:
        raise WireError(f"message too large ({n} bytes)")
    while len(buf) < _LEN.size + n:
        more = sock.recv(min(1 << 20, _LEN.size + n - len(buf)))
        if not more:
            raise WireError("connection closed mid-message")
        buf += more
    try:
        obj = json.loads(bytes(buf[_LEN.size : _LEN.size + n]))
    except ValueError as e:
        raise WireError(f"malformed message: {e}") from None
    if not isinstance(obj, dict):
        raise WireError("malformed message: not an object")
    return obj, list(fds)
