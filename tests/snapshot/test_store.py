"""Snapshot semantics as containerd expects them (no containerd needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazypull.snapshot.snapshotter import Snapshotter
from lazypull.snapshot.store import AlreadyExists, FailedPrecondition, InvalidArgument, Kind, MetaStore, NotFound


def test_lifecycle_and_errors(tmp_path: Path) -> None:
    sn = Snapshotter(tmp_path / "root", None, None)
    ms = sn.prepare("a-active", "", {"x": "1"})
    assert ms[0].type == "bind" and ms[0].options == ["rw", "rbind"]
    (Path(ms[0].source) / "file").write_text("layer a")
    with pytest.raises(AlreadyExists):
        sn.prepare("a-active", "", {})
    with pytest.raises(FailedPrecondition):
        sn.prepare("child", "a-active", {})  # parent not committed
    sn.commit("a", "a-active", {"y": "2"})
    with pytest.raises(NotFound):
        sn.stat("a-active")
    a = sn.stat("a")
    assert a.kind == Kind.COMMITTED and a.labels == {"x": "1", "y": "2"}
    sn.prepare("b-active", "a", {})
    sn.commit("b", "b-active", {})
    ov = sn.prepare("c", "b", {})[0]
    assert ov.type == "overlay"
    lower = next(o for o in ov.options if o.startswith("lowerdir="))
    assert lower.count(":") == 1 and lower.split("=", 1)[1].split(":")[0].endswith(f"/{sn.stat('b').id}/fs")
    assert any(o.startswith("upperdir=") for o in ov.options) and any(o.startswith("workdir=") for o in ov.options)
    v = sn.view("v", "a", {})[0]
    assert v.type == "bind" and "ro" in v.options and (Path(v.source) / "file").read_text() == "layer a"
    assert sn.view("v2", "b", {})[0].options == [next(o for o in ov.options if o.startswith("lowerdir="))]
    with pytest.raises(FailedPrecondition):
        sn.remove("a")  # has children
    size, inodes = sn.usage("a")
    assert inodes == 1 and size > 0
    sn.remove("v")
    assert not (tmp_path / "root" / "snapshots" / str(a.id + 100)).exists()
    assert {s.key for s in sn.list()} == {"a", "b", "c", "v2"}


def test_update_labels_with_field_paths(tmp_path: Path) -> None:
    st = MetaStore(tmp_path / "m.db")
    st.create("k", "", Kind.ACTIVE, {"keep": "1", "drop": "2"})
    assert st.update_labels("k", {"new": "3"}, ["labels.new", "labels.drop"]).labels == {"keep": "1", "new": "3"}
    assert st.update_labels("k", {"only": "x"}, []).labels == {"only": "x"}
    with pytest.raises(InvalidArgument):
        st.update_labels("k", {}, ["parent"])


def test_metadata_survives_reopen_and_cleanup_removes_orphans(tmp_path: Path) -> None:
    sn = Snapshotter(tmp_path / "root", None, None)
    sn.prepare("x", "", {})
    sn.close()
    (tmp_path / "root" / "snapshots" / "999" / "fs").mkdir(parents=True)
    sn2 = Snapshotter(tmp_path / "root", None, None)
    assert sn2.stat("x").kind == Kind.ACTIVE
    sn2.cleanup()
    assert not (tmp_path / "root" / "snapshots" / "999").exists()
    assert (tmp_path / "root" / "snapshots" / str(sn2.stat("x").id)).exists()


def test_create_committed_is_one_committed_row(tmp_path: Path) -> None:
    st = MetaStore(tmp_path / "m.db")
    st.create("base-active", "", Kind.ACTIVE, {})
    with pytest.raises(FailedPrecondition):
        st.create_committed("layer", "base-active", {}, {"digest": "sha256:x"})  # parent not committed
    st.commit("base", "base-active", {})
    s = st.create_committed("layer", "base", {"l": "1"}, {"digest": "sha256:x"})
    assert (s.kind, s.parent, s.labels, s.remote) == (Kind.COMMITTED, "base", {"l": "1"}, {"digest": "sha256:x"})
    with pytest.raises(AlreadyExists):
        st.create_committed("layer", "base", {}, {"digest": "sha256:x"})
    st.close()
    again = MetaStore(tmp_path / "m.db").get("layer")
    assert again.remote == {"digest": "sha256:x"} and again.kind == Kind.COMMITTED
