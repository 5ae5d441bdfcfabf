"""Names listed more than once in a layer: the writer and the reader agree with tar extraction."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazypull.format import BytesSource, EntryType, LayerIndex, build_estargz, estargz_writer, open_estargz
from lazypull.format.toc import TOC
from tests.format.helpers import build
from tests.support.images import Entry, make_tar


def extracted(ents: list[Entry], dest: Path) -> dict[str, tuple[object, ...]]:
    """What applying the layer leaves on disk, entry by entry as containerd's applier does:
    an existing path is removed (with its tree) unless both are directories, then GNU tar
    extracts the entry (a hardlink links to the file the name holds at that moment)."""
    dest.mkdir()
    for e in ents:
        p = dest / e.name
        if (p.is_symlink() or p.exists()) and not (e.type == "dir" and p.is_dir() and not p.is_symlink()):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        subprocess.run(["tar", "--same-owner", "-xpf", "-", "-C", str(dest)], input=make_tar([e]), check=True)
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(dest):
        for n in dirs + files:
            p = Path(dirpath) / n
            st_ = p.lstat()
            if stat.S_ISREG(st_.st_mode):
                what: object = ("reg", p.read_bytes())
            elif stat.S_ISLNK(st_.st_mode):
                what = ("symlink", os.readlink(p))
            else:
                what = (stat.S_IFMT(st_.st_mode),)
            out[str(p.relative_to(dest))] = (what, stat.S_IMODE(st_.st_mode), st_.st_uid)
    return out


def served(idx: LayerIndex, blob: bytes) -> dict[str, tuple[object, ...]]:
    """The same view of a layer index (hardlinks read through to their file)."""
    out: dict[str, tuple[object, ...]] = {}
    src = BytesSource(blob)
    for e in idx.entries():
        if not e.name or e.name.endswith("landmark"):
            continue
        if e.type in (EntryType.REG, EntryType.HARDLINK):
            target = idx.lookup(e.link_name) if e.type == EntryType.HARDLINK else e
            assert target is not None
            what: object = ("reg", idx.read(src, e.name, 0, target.size))
            mode = target.mode
        elif e.type == EntryType.SYMLINK:
            what, mode = ("symlink", e.link_name), 0o777
        else:
            what, mode = (stat.S_IFDIR if e.type == EntryType.DIR else -1,), e.mode
        out[e.name] = (what, mode, (target if e.type == EntryType.HARDLINK else e).uid)  # type: ignore[union-attr]
    return out


def _keep_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """Write TOCs that list every tar entry, duplicates included (as some writers do)."""

    class KeepAll:
        replaced = 0

        def __init__(self, *_: object) -> None:
            self._items: list[object] = []

        def add(self, _name: str, _kind: str, _link: str, item: object) -> None:
            self._items.append(item)

        def items(self) -> list[object]:
            return self._items

        def dangling_links(self) -> set[str]:
            return set()

    monkeypatch.setattr(estargz_writer, "LastWins", KeepAll)


TMP_TWICE = [
    Entry("tmp", "dir", mode=0o755),
    Entry("tmp/a", data=b"a"),
    Entry("tmp", "dir", mode=0o1777, uid=3),
]


def test_directory_listed_twice_keeps_the_last_metadata_and_children() -> None:
    blob, res = build(TMP_TWICE)
    toc = TOC.parse(_toc_json(blob))
    assert [e.name for e in toc.entries if e.name.startswith("tmp")] == ["tmp/", "tmp/a"]
    idx = open_estargz(BytesSource(blob), toc_digest=res.toc_digest)
    tmp = idx.lookup("tmp")
    assert tmp is not None and tmp.mode == 0o1777 and tmp.uid == 3 and idx.children("tmp") == ["a"]


def test_reader_accepts_a_toc_with_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    _keep_all(monkeypatch)
    blob, res = build(TMP_TWICE)
    assert [e.name for e in TOC.parse(_toc_json(blob)).entries].count("tmp/") == 2
    tmp = open_estargz(BytesSource(blob), toc_digest=res.toc_digest).lookup("tmp")
    assert tmp is not None and tmp.mode == 0o1777


def _toc_json(blob: bytes) -> bytes:
    from lazypull.format.estargz_reader import read_toc_member
    from lazypull.format.footer import parse_footer

    footer = parse_footer(blob[-51:], len(blob))
    return read_toc_member(BytesSource(blob), footer.toc_offset, len(blob) - footer.size, 1 << 24)


CASES = {
    "file replaces directory tree": [
        Entry("d", "dir"),
        Entry("d/sub", "dir"),
        Entry("d/sub/f", data=b"x"),
        Entry("d", data=b"now a file"),
    ],
    "directory replaces file": [Entry("d", data=b"file"), Entry("d", "dir", mode=0o700), Entry("d/g", data=b"g")],
    "file replaced keeps hardlinks to the old content": [
        Entry("f", data=b"old", mode=0o600),
        Entry("h1", "hardlink", link="f"),
        Entry("h2", "hardlink", link="./f"),
        Entry("f", data=b"new content"),
        Entry("h3", "hardlink", link="f"),
    ],
    "hardlink replaced keeps links made through it": [
        Entry("f", data=b"data"),
        Entry("h1", "hardlink", link="f"),
        Entry("h2", "hardlink", link="h1"),
        Entry("h1", "symlink", link="f"),
    ],
    "symlink over file, file over symlink": [
        Entry("s", data=b"1"),
        Entry("s", "symlink", link="x"),
        Entry("t", "symlink", link="y"),
        Entry("t", data=b"2"),
    ],
}


@pytest.mark.parametrize("keep_all", [False, True], ids=["our-toc", "toc-with-duplicates"])
@pytest.mark.parametrize("case", list(CASES))
def test_duplicates_serve_what_tar_extracts(
    case: str, keep_all: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if keep_all:
        _keep_all(monkeypatch)
    ents = CASES[case]
    blob, res = build(ents, chunk_size=2)
    idx = open_estargz(BytesSource(blob), toc_digest=res.toc_digest)
    assert served(idx, blob) == extracted(ents, tmp_path / "x")


def test_prioritized_reordering_keeps_the_last_entry(tmp_path: Path) -> None:
    ents = [Entry("f", data=b"first"), Entry("other", data=b"o"), Entry("f", data=b"second")]
    out = io.BytesIO()
    res = build_estargz(io.BytesIO(make_tar(ents)), out, prioritized_files=["f"])
    idx = open_estargz(BytesSource(out.getvalue()), toc_digest=res.toc_digest)
    assert idx.read(BytesSource(out.getvalue()), "f", 0, 100) == b"second"
    assert served(idx, out.getvalue()) == extracted(ents, tmp_path / "x")


NAMES = ["a", "a/x", "a/y", "a/y/z", "b", "b/x"]


@st.composite
def dup_layers(draw: st.DrawFn) -> list[Entry]:
    """Random layers that reuse a few names; every entry extracts (parents are dirs)."""
    live: dict[str, str] = {}
    out: list[Entry] = []

    def put(e: Entry) -> None:
        parent = e.name.rpartition("/")[0]
        if parent and live.get(parent) != "dir":
            put(Entry(parent, "dir", mode=0o755))
        if e.type != "dir" or live.get(e.name) != "dir":
            for n in [n for n in live if n.startswith(e.name + "/")]:
                del live[n]
        live[e.name] = e.type
        out.append(e)

    for _ in range(draw(st.integers(1, 12))):
        name = draw(st.sampled_from(NAMES))
        kind = draw(st.sampled_from(["file", "dir", "symlink", "hardlink"]))
        mode = draw(st.sampled_from([0o755, 0o644, 0o1777, 0o600]))
        if kind == "hardlink":
            files = [
                n
                for n, t in live.items()
                if t == "file" and n != name and not n.startswith(name + "/") and not name.startswith(n + "/")
            ]
            if not files:
                continue
            put(Entry(name, "hardlink", link=draw(st.sampled_from(files))))
        elif kind == "file":
            put(Entry(name, data=draw(st.binary(max_size=8)), mode=mode))
        else:
            put(Entry(name, kind, mode=mode, link="t" if kind == "symlink" else ""))
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(ents=dup_layers(), keep_all=st.booleans())
def test_property_any_duplicates_serve_what_tar_extracts(
    ents: list[Entry], keep_all: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        if keep_all:
            _keep_all(mp)
        blob, res = build(ents, chunk_size=3)
    idx = open_estargz(BytesSource(blob), toc_digest=res.toc_digest)
    assert served(idx, blob) == extracted(ents, tmp_path_factory.mktemp("x") / "x")


def test_tar_headers_of_dropped_entries_stay_in_the_blob() -> None:
    """The blob's own tar stream extracts to the same tree (containerd may apply it as plain gzip)."""
    import gzip

    blob, _ = build(TMP_TWICE)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tf:
        assert [m.name for m in tf.getmembers()].count("tmp") == 2
