"""Digests: the one place that parses, computes and verifies ``algorithm:hex`` strings."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from typing import BinaryIO

from lazypull.errors import DigestMismatchError, InvalidDigestError

_ALGORITHMS = {"sha256": 64, "sha512": 128}
# Exactly "algorithm:" and the algorithm's hex length in lowercase: nothing else can reach a
# file path or a URL built from a digest.
_WELL_FORMED = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")


def validate(digest: str, algorithms: Collection[str] = _ALGORITHMS.keys()) -> str:
    """Return *digest* if it is a well-formed digest of one of *algorithms*, else raise.

    Every digest that comes from outside (manifests, TOCs, labels) goes through here
    before it is used, in particular before it becomes part of a path."""
    if not isinstance(digest, str) or _WELL_FORMED.fullmatch(digest) is None:
        raise InvalidDigestError(f"malformed digest {str(digest)[:100]!r}")
    if digest.partition(":")[0] not in algorithms:
        raise InvalidDigestError(f"unsupported digest algorithm in {digest[:100]!r} (expected {', '.join(algorithms)})")
    return digest


def is_valid(digest: str, algorithms: Collection[str] = _ALGORITHMS.keys()) -> bool:
    try:
        validate(digest, algorithms)
    except InvalidDigestError:
        return False
    return True


def hex_part(digest: str) -> str:
    return validate(digest).partition(":")[2]


def algorithm(digest: str) -> str:
    return validate(digest).partition(":")[0]


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
