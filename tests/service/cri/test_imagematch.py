"""The kubelet's matchImages rules: host glob per DNS label, equal ports, path prefix."""

from __future__ import annotations

import pytest

from lazypull.service.cri.imagematch import BadPattern, auth_key, best_key, check_pattern, matches


@pytest.mark.parametrize(
    ("pattern", "image", "expected"),
    [
        # the kubelet documentation's examples
        ("*.kubernetes.io", "abc.kubernetes.io", True),
        ("*.kubernetes.io", "abc.def.kubernetes.io", False),
        ("*.*.kubernetes.io", "abc.def.kubernetes.io", True),
        ("prefix.*.io", "prefix.kubernetes.io", True),
        ("*-good.kubernetes.io", "prefix-good.kubernetes.io", True),
        ("*.kubernetes.io", "kubernetes.io", False),
        ("123456789.dkr.ecr.us-east-1.amazonaws.com", "123456789.dkr.ecr.us-east-1.amazonaws.com/app", True),
        ("*.dkr.ecr.*.amazonaws.com", "123456789.dkr.ecr.eu-west-3.amazonaws.com/team/app", True),
        ("*.azurecr.io", "myregistry.azurecr.io/app", True),
        ("gcr.io", "gcr.io/project/app", True),
        ("*.gcr.io", "gcr.io/project/app", False),
        # ports must be equal: none on both sides, or the same
        ("registry.io:8080/path", "registry.io:8080/path/image", True),
        ("registry.io:8080/path", "registry.io/path/image", False),
        ("registry.io", "registry.io:5000/app", False),
        ("127.0.0.1:5000", "127.0.0.1:5000/team/app", True),
        ("127.0.0.1:5001", "127.0.0.1:5000/team/app", False),
        ("127.0.0.*:5000", "127.0.0.1:5000/team/app", True),
        ("[::1]:5000", "[::1]:5000/team/app", True),
        # the path is a plain string prefix
        ("registry.io/team", "registry.io/team/app", True),
        ("registry.io/team", "registry.io/teamx/app", True),
        ("registry.io/team/app", "registry.io/team", False),
        ("registry.io/other", "registry.io/team/app", False),
        # globs within a label: ?, classes, negated classes, escapes; no crossing of dots
        ("reg?.io", "reg1.io/a", True),
        ("reg?.io", "reg12.io/a", False),
        ("reg[0-3].io", "reg2.io/a", True),
        ("reg[0-3].io", "reg7.io/a", False),
        ("reg[^0-3].io", "reg7.io/a", True),
        ("reg\\*.io", "reg*.io/a", True),
        ("reg\\*.io", "regx.io/a", False),
        ("*", "localhost/a", True),
        ("*", "registry.io/a", False),
        # schemes are dropped, as the kubelet does
        ("https://registry.io/team", "registry.io/team/app", True),
        ("Registry.io", "registry.io/a", False),  # case-sensitive, as filepath.Match
    ],
)
def test_matches(pattern: str, image: str, expected: bool) -> None:
    assert matches(pattern, image) is expected


@pytest.mark.parametrize("bad", ["reg[.io", "reg[]].io", "reg\\", "reg[z-a].io", "ftp://x.io", ":5000/a", "a:b:c/x"])
def test_bad_patterns_are_refused_and_never_match(bad: str) -> None:
    with pytest.raises(BadPattern):
        check_pattern(bad)
    assert not matches(bad, "reg1.io/a")


def test_auth_keys_are_normalised_like_the_kubelets() -> None:
    assert auth_key("https://registry.io/v2/team") == "registry.io/team"
    assert auth_key("http://registry.io/") == "registry.io"
    assert auth_key("registry.io:5000/v1/") == "registry.io:5000"
    assert auth_key("[::1]:5000/x") == "[::1]:5000/x"


def test_most_specific_auth_key_first() -> None:
    keys = ["*.example.com", "reg.example.com", "reg.example.com/team", "reg.example.com/team/app", "other.io"]
    assert best_key(keys, "reg.example.com/team/app") == "reg.example.com/team/app"
    assert best_key(keys, "reg.example.com/team/web") == "reg.example.com/team"
    assert best_key(keys, "reg.example.com/ops/web") == "reg.example.com"
    assert best_key(keys, "mirror.example.com/ops/web") == "*.example.com"
    assert best_key(keys, "example.com/ops/web") is None
    assert best_key(["https://reg.example.com/v2/"], "reg.example.com/a") == "https://reg.example.com/v2/"
    # Docker Hub: its index key serves docker.io images
    assert best_key(["index.docker.io"], "docker.io/library/busybox") == "index.docker.io"
    assert best_key(["docker.io"], "docker.io/library/busybox") == "docker.io"
    assert best_key(["reg[.io", "reg1.io"], "reg1.io/a") == "reg1.io"  # a malformed key is skipped
