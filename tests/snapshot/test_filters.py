"""containerd's snapshot filter syntax, as containerd sends it on Walk."""

from __future__ import annotations

import pytest

from lazypull.snapshot.filters import FilterError, index_hints, parse
from lazypull.snapshot.store import Kind, Snapshot


def snap(key: str, parent: str = "", labels: dict[str, str] | None = None, kind: Kind = Kind.COMMITTED) -> Snapshot:
    return Snapshot(id=1, key=key, parent=parent, kind=kind, labels=labels or {}, created=0.0, updated=0.0)


def test_containerds_remote_snapshot_walk() -> None:
    f = parse(['labels."containerd.io/snapshot.ref"==sha256:abc,parent=="sha256:p"'])
    assert f(snap("x", "sha256:p", {"containerd.io/snapshot.ref": "sha256:abc"}))
    assert not f(snap("x", "", {"containerd.io/snapshot.ref": "sha256:abc"}))
    assert not f(snap("x", "sha256:p", {"containerd.io/snapshot.ref": "sha256:other"}))
    top = parse(['labels."containerd.io/snapshot.ref"==sha256:abc,parent==""'])
    assert top(snap("x", "", {"containerd.io/snapshot.ref": "sha256:abc"}))


def test_operators_alternatives_and_errors() -> None:
    s = snap("k1", labels={"a": "1", "b.c": "x y"}, kind=Kind.ACTIVE)
    assert parse([])(s) and parse(["name==k1"])(s) and not parse(["name!=k1"])(s)
    assert parse(["labels.a"])(s) and not parse(["labels.zz"])(s)
    assert parse(['labels."b.c"=="x y"'])(s) and parse(["name~=^k[0-9]$"])(s)
    assert parse(["kind==active"])(s) and parse(["name==nope", "labels.a==1"])(s)
    with pytest.raises(FilterError):
        parse(["name~=("])


def test_index_hints_narrow_containerds_walk() -> None:
    assert index_hints(['labels."containerd.io/snapshot.ref"==sha256:abc,parent=="sha256:p"']) == [
        ("parent", "sha256:p")
    ]
    assert index_hints(["name==k1", 'parent==""']) == [("name", "k1"), ("parent", "")]
    assert index_hints(["labels.a==1"]) is None and index_hints([]) is None
    assert index_hints(["name==k1", "labels.a==1"]) is None
