"""Image references with Docker's rules: ``[host[:port]/]name[:tag][@digest]``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lazypull.errors import InvalidDigestError, LazypullError
from lazypull.oci import digest as digestlib

DEFAULT_REGISTRY = "docker.io"
DOCKER_HUB_HOST = "registry-1.docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_HOST = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9-]+)*)(?::\d+)?$")


class ReferenceError(LazypullError, ValueError):
    """A reference string is malformed."""


@dataclass(frozen=True)
class Reference:
    registry: str  # as written ("docker.io", "localhost:5000", "[::1]:5000")
    repository: str  # "library/alpine"
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        try:
            return cls._parse(text)
        except ReferenceError as e:
            hint = _hint(text)
            if hint is None:
                raise
            raise ReferenceError(f"{text[:200]!r} is not an image reference: {hint}") from e

    @classmethod
    def _parse(cls, text: str) -> Reference:
        if not text or len(text) > 4096 or text != text.strip():
            raise ReferenceError(f"invalid image reference {text[:100]!r}")
        rest, digest = text, None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            try:
                digestlib.validate(digest)
            except InvalidDigestError as e:
                raise ReferenceError(f"invalid image reference {text!r}: {e}") from None
        tag = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG.match(tag):
                raise ReferenceError(f"invalid tag {tag!r} in {text!r}")
        first, sep, remainder = rest.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
            registry, name = first, remainder
            if not _HOST.match(registry):
                raise ReferenceError(f"invalid registry host {registry!r} in {text!r}")
        else:
            registry, name = DEFAULT_REGISTRY, rest
        if registry == DEFAULT_REGISTRY and "/" not in name:
            name = f"library/{name}"
        if not _NAME.match(name) or len(name) > 255:
            raise ReferenceError(f"invalid repository name {name!r} in {text!r} (lowercase letters, digits, . _ -)")
        if tag is None and digest is None:
            tag = "latest"
        return cls(registry, name, tag, digest)

    @property
    def host(self) -> str:
        """The host to contact (Docker Hub's API host for docker.io)."""
        return DOCKER_HUB_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def object(self) -> str:
        """What to ask the manifests endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        s = f"{self.registry}/{self.repository}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


_TRANSPORTS = ("docker-daemon:", "containers-storage:", "oci-archive:", "dir:", "ostree:", "sif:")


def _hint(text: str) -> str | None:
    """What was probably meant, for strings that look like another tool's image names."""
    for scheme in ("docker://", "http://", "https://"):
        if text.startswith(scheme):
            rest = text[len(scheme) :]
            tip = f"drop the scheme ({rest})"
            return tip + "; --plain-http for a plain-HTTP registry" if scheme == "http://" else tip
    if text.startswith((".", "/", "~")):
        if text.endswith((".tar", ".tar.gz", ".tgz")):
            return f"for a `docker save` tarball use docker-archive:{text}"
        return f"for an OCI layout directory use oci:{text}[:TAG] (docker-archive:PATH for a `docker save` tarball)"
    if text.startswith(_TRANSPORTS):
        return "lazypull reads oci:DIR[:TAG], docker-archive:PATH[:REF] and registry references (HOST/NAME:TAG)"
    return None
