from __future__ import annotations

import pytest

from lazypull.registry.reference import Reference, ReferenceError

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repo", "tag", "digest"),
    [
        ("alpine", "docker.io", "library/alpine", "latest", None),
        ("alpine:3.19", "docker.io", "library/alpine", "3.19", None),
        ("user/app", "docker.io", "user/app", "latest", None),
        ("localhost/app:v1", "localhost", "app", "v1", None),
        ("localhost:5000/a/b/c:v1", "localhost:5000", "a/b/c", "v1", None),
        ("127.0.0.1:5000/app@" + D, "127.0.0.1:5000", "app", None, D),
        ("ghcr.io/org/app:v1@" + D, "ghcr.io", "org/app", "v1", D),
        ("[::1]:5000/app:x", "[::1]:5000", "app", "x", None),
    ],
)
def test_parse(text: str, registry: str, repo: str, tag: str | None, digest: str | None) -> None:
    r = Reference.parse(text)
    assert (r.registry, r.repository, r.tag, r.digest) == (registry, repo, tag, digest)
    assert Reference.parse(str(r)) == r


@pytest.mark.parametrize(
    "bad", ["", "UPPER/case", "app:bad tag", "app@sha256:short", "a//b", " app", "app:" + "x" * 200]
)
def test_malformed(bad: str) -> None:
    with pytest.raises(ReferenceError):
        Reference.parse(bad)


def test_docker_hub_api_host() -> None:
    assert Reference.parse("alpine").host == "registry-1.docker.io"
