"""Digests: the one place that parses, computes and verifies ``algorithm:hex`` strings."""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO

from lazypull.errors import DigestMismatchError, InvalidDigestError

_ALGORITHMS = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"^[a-f0-9]+$")


def validate(digest: str) -> str:
    """Return *digest* if it is a supported, well-formed digest, else raise."""
    algo, sep, hexpart = digest.partition(":")
    if not sep or algo not in _ALGORITHMS:
        raise InvalidDigestError(f"unsupported or malformed digest {digest[:80]!r}")
    if len(hexpart) != _ALGORITHMS[algo] or not _HEX.match(hexpart):
        raise InvalidDigestError(f"malformed {algo} digest {digest[:80]!r}")
    return digest


def hex_part(digest: str) -> str:
    return validate(digest).partition(":")[2]


def algorithm(digest: str) -> str:
    return validate(digest).partition(":")[0]


def new_hasher(digest_or_algo: str = "sha256") -> hashlib._Hash:
    algo = digest_or_algo.partition(":")[0]
    if algo not in _ALGORITHMS:
        raise InvalidDigestError(f"unsupported digest algorithm {algo!r}")
    return hashlib.new(algo)


def of_bytes(data: bytes | bytearray | memoryview, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    h.update(data)
    return f"{algo}:{h.hexdigest()}"


def of_file(f: BinaryIO, algo: str = "sha256", bufsize: int = 1 << 20) -> str:
    h = hashlib.new(algo)
    while chunk := f.read(bufsize):
        h.update(chunk)
    return f"{algo}:{h.hexdigest()}"


def verify(data: bytes | bytearray | memoryview, expected: str, what: str = "content") -> None:
    """Raise :class:`DigestMismatchError` unless *data* hashes to *expected*."""
    actual = of_bytes(data, algorithm(expected))
    if actual != expected:
        raise DigestMismatchError(what, expected, actual)


class Digester:
    """Incremental digest of a stream, for verifying while copying."""

    def __init__(self, algo: str = "sha256") -> None:
        self.algo = algo
        self._h = hashlib.new(algo)
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    def digest(self) -> str:
        return f"{self.algo}:{self._h.hexdigest()}"
