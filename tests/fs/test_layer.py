"""One layer as overlayfs sees it, answered from the compact index (no FUSE needed)."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from lazypull.cache.chunks import ChunkCache
from lazypull.format import BytesSource, open_layer
from lazypull.format.compactindex import CompactIndex
from lazypull.format.compactwrite import compact_copy
from lazypull.format.counting import CountingSource
from lazypull.format.gzipmember import compress_member
from lazypull.fs import layer as layer_module
from lazypull.fs.accesslog import AccessLog
from lazypull.fs.fetcher import Fetcher
from lazypull.fs.fuse.ops import ROOT_INO, Attr
from lazypull.fs.layer import OPAQUE_XATTR, LayerFS
from lazypull.fs.spec import LayerSpec, index_key, index_path, open_layer_fs
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor
from tests.format.helpers import build
from tests.support.hostile import blob_around_toc
from tests.support.images import Entry

BIG = os.urandom(200_000)
ENTRIES = [
    Entry("etc/", "dir"),
    Entry("etc/passwd", data=b"root:x:0:0\n", xattrs={"user.note": "hi"}, uid=5, gid=6),
    Entry("etc/hard", "hardlink", link="etc/passwd"),
    Entry("etc/sym", "symlink", link="passwd"),
    Entry("etc/big", data=BIG),
    Entry("dev/null", "char", devmajor=1, devminor=3),
    Entry("run/fifo", "fifo"),
    Entry("var/.wh.cache", data=b""),
    Entry("var/lib/.wh..wh..opq", data=b""),
    Entry("var/lib/new", data=b"n"),
    Entry("opt/.wh.app", data=b""),
    Entry("opt/app/", "dir"),  # removed below and made again here: shown opaque, no whiteout
    Entry("srv/y", data=b"y"),
    Entry("srv/.wh.y", data=b""),  # y wins
    Entry("a/b/c/d", data=b"deep"),
]


def make_fs(tmp_path: Path, compact: bool = True) -> tuple[LayerFS, bytes]:
    blob, _ = build(ENTRIES, chunk_size=64 << 10, prioritized_files=["etc/passwd"])
    src = BytesSource(blob)
    idx = open_layer(src)
    if compact:
        idx = compact_copy(idx)
    return LayerFS(idx, Fetcher(idx, src, ChunkCache(tmp_path / "cache"))), blob


def walk(fs: LayerFS) -> dict[str, Attr]:
    out: dict[str, Attr] = {"": fs.getattr(ROOT_INO)}
    stack = [("", ROOT_INO)]
    while stack:
        path, ino = stack.pop()
        for name, a in fs.readdir(ino):
            p = f"{path}/{name.decode()}" if path else name.decode()
            out[p] = a
            assert fs.lookup(ino, name) == a
            if stat.S_ISDIR(a.mode):
                stack.append((p, a.ino))
    return out


def test_the_overlay_view(tmp_path: Path) -> None:
    fs, _ = make_fs(tmp_path)
    tree = walk(fs)
    # Index order (the TOC's; the prioritized etc/passwd moved etc to the front).
    assert [n for n, _ in fs.readdir(ROOT_INO)] == [b"etc", b"dev", b"run", b"var", b"opt", b"srv", b"a"]
    assert [n for n, _ in fs.readdir(tree["etc"].ino)] == [b"passwd", b"sym", b"big", b"hard"]
    assert tree[""].nlink == 2 + 7 and tree["etc"].nlink == 2 and tree["a"].nlink == 3
    passwd = tree["etc/passwd"]
    assert tree["etc/hard"] == passwd and passwd.nlink == 2  # one inode, two names
    assert (stat.S_IFMT(passwd.mode), passwd.mode & 0o7777, passwd.uid, passwd.gid) == (stat.S_IFREG, 0o644, 5, 6)
    assert passwd.size == 11 and tree["etc/big"].size == len(BIG)
    assert stat.S_ISLNK(tree["etc/sym"].mode) and tree["etc/sym"].size == 6
    assert fs.readlink(tree["etc/sym"].ino) == b"passwd"
    assert stat.S_ISCHR(tree["dev/null"].mode) and tree["dev/null"].rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(tree["run/fifo"].mode)
    wh = tree["var/cache"]
    assert (wh.mode, wh.rdev, wh.size) == (stat.S_IFCHR, 0, 0)  # a whiteout
    assert OPAQUE_XATTR in fs.listxattr(tree["var/lib"].ino) and fs.getxattr(tree["var/lib"].ino, OPAQUE_XATTR) == b"y"
    assert "var/lib/.wh..wh..opq" not in tree and "var/lib/new" in tree
    assert stat.S_ISDIR(tree["opt/app"].mode) and fs.getxattr(tree["opt/app"].ino, OPAQUE_XATTR) == b"y"
    assert [n for n, _ in fs.readdir(tree["opt"].ino)] == [b"app"]
    assert stat.S_ISREG(tree["srv/y"].mode) and [n for n, _ in fs.readdir(tree["srv"].ino)] == [b"y"]
    assert OPAQUE_XATTR not in fs.listxattr(tree["etc"].ino)
    assert fs.listxattr(passwd.ino) == [b"user.note"] and fs.getxattr(passwd.ino, b"user.note") == b"hi"
    assert not any(".landmark" in p for p in tree)
    # Inodes: the whiteout opt/.wh.app keeps one, though opt/app took its name.
    assert fs.inode_count == len({a.ino for a in tree.values()}) + 1 == fs.statfs()[1] - 1


def test_reads_go_through_the_fetcher(tmp_path: Path) -> None:
    fs, _ = make_fs(tmp_path)
    tree = walk(fs)
    fs.accessed = AccessLog()
    assert fs.read(tree["etc/big"].ino, 65_000, 100_000) == BIG[65_000:165_000]
    assert fs.read(tree["etc/hard"].ino, 0, 100) == b"root:x:0:0\n"
    assert fs.read(tree["etc/big"].ino, len(BIG) - 5, 100) == BIG[-5:]
    assert list(fs.accessed) == ["etc/big", "etc/passwd"]
    big, passwd = fs.accessed.rows()
    assert big[2] == [[65_000, 100_000], [len(BIG) - 5, 5]] and passwd[2] == [[0, 11]]
    assert fs.bytes_served == 100_000 + 11 + 5
    fd = fs.passthrough_fd(tree["etc/passwd"].ino)
    assert fd is not None
    try:
        assert os.pread(fd, 100, 0) == b"root:x:0:0\n"
    finally:
        os.close(fd)


def test_prefetch_and_background_fetch_walk_the_index_in_blob_order(tmp_path: Path) -> None:
    blob, _ = build(ENTRIES, chunk_size=64 << 10, prioritized_files=["etc/big"])
    src = CountingSource(BytesSource(blob))
    idx = compact_copy(open_layer(src))
    fetcher = Fetcher(idx, src, ChunkCache(tmp_path / "cache"))
    before = src.reads
    assert fetcher.prefetch() > 0 and src.reads == before + 1  # one request for the prioritized range
    assert fetcher.background_fetch(threading.Event()) > 0
    cache = fetcher.cache
    assert all(cache.contains(c.digest) for _, c in idx.chunks_by_blob())
    reads = src.reads
    fs = LayerFS(idx, fetcher)
    assert fs.read(walk(fs)["etc/big"].ino, 0, len(BIG)) == BIG and src.reads == reads


def test_errors(tmp_path: Path) -> None:
    fs, _ = make_fs(tmp_path)
    tree = walk(fs)
    cases = [
        (lambda: fs.lookup(ROOT_INO, b"nope"), errno.ENOENT),
        (lambda: fs.lookup(tree["etc/passwd"].ino, b"x"), errno.ENOTDIR),
        (lambda: fs.readdir(tree["etc/passwd"].ino), errno.ENOTDIR),
        (lambda: fs.getattr(10**6), errno.ENOENT),
        (lambda: fs.getattr(0), errno.ENOENT),
        (lambda: fs.read(tree["etc"].ino, 0, 1), errno.EISDIR),
        (lambda: fs.read(tree["var/cache"].ino, 0, 1), errno.EINVAL),
        (lambda: fs.readlink(tree["etc/passwd"].ino), errno.EINVAL),
        (lambda: fs.getxattr(tree["etc/passwd"].ino, b"user.none"), errno.ENODATA),
        (lambda: fs.lookup(ROOT_INO, b".prefetch.landmark"), errno.ENOENT),
    ]
    for call, err in cases:
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == err
    # Inode numbers: a node's place in index order plus one, root 1; hidden nodes leave gaps
    # (fixed by the index alone, so the parsed and the compact index agree on them).
    n_nodes = fs.tree.n_nodes  # type: ignore[union-attr]
    nodes = [fs.tree.node_of_inode(ino) for ino in range(1, n_nodes + 1)]
    assert all(node in (None, ino - 1) for ino, node in enumerate(nodes, 1)) and nodes[0] == 0
    assert sum(node is not None for node in nodes) == fs.inode_count
    for hidden in (".prefetch.landmark", "var/lib/.wh..wh..opq", "etc/hard", "srv/.wh.y"):
        node = fs.tree.find(hidden)
        assert node is not None and nodes[node] is None  # no inode of its own
        with pytest.raises(FileNotFoundError):
            fs.getattr(node + 1)
    with pytest.raises(FileNotFoundError):
        fs.getattr(n_nodes + 1)


def test_an_index_that_is_not_compact_gets_the_same_view(tmp_path: Path) -> None:
    """SOCI indexes stay Python objects; LayerFS then keeps an in-memory compact tree."""
    compact, _ = make_fs(tmp_path / "a")
    other, _ = make_fs(tmp_path / "b", compact=False)
    assert walk(other) == walk(compact)
    big = walk(other)["etc/big"].ino
    assert other.read(big, 1, 70_000) == BIG[1:70_001]


def test_the_layer_server_keeps_the_index_in_a_file_and_reuses_it(tmp_path: Path) -> None:
    blob, res = build(ENTRIES, chunk_size=64 << 10)
    blob_path = tmp_path / "blob"
    blob_path.write_bytes(blob)
    desc = Descriptor(mt.OCI_LAYER_GZIP, res.blob_digest, len(blob), {mt.ANNOTATION_TOC_DIGEST: res.toc_digest})
    spec = LayerSpec(layer=desc.to_json(), cache_dir=str(tmp_path / "cache"), blob_path=str(blob_path))
    saved = tmp_path / "state" / "toc"
    fs, _, _, index = open_layer_fs(spec, ChunkCache(tmp_path / "cache"), saved)
    assert isinstance(index, CompactIndex)
    path = index_path(saved)
    assert path.stat().st_mode & 0o777 == 0o600
    want = walk(fs)

    # Re-opened from the file alone: no byte of the blob is read (here it is even garbage).
    saved.unlink()
    blob_path.write_bytes(b"\0" * len(blob))
    fs, _, source, index = open_layer_fs(spec, ChunkCache(tmp_path / "cache2"), saved)
    assert walk(fs) == want and source.reads == 0

    # A damaged file is rebuilt from the TOC.
    blob_path.write_bytes(blob)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    fs, _, source, index = open_layer_fs(spec, ChunkCache(tmp_path / "cache3"), saved)
    assert walk(fs) == want and source.reads > 0
    assert CompactIndex.open(path, index_key(desc)).n_nodes == index.n_nodes  # intact again
    assert fs.read(want["etc/big"].ino, 0, len(BIG)) == BIG


def held_build(entries: list[Entry], tmp_path: Path, build_fails: bool = False) -> tuple[LayerFS, threading.Event]:
    """A layer whose compact index is built in the background once the event is set."""
    blob, _ = build(entries, chunk_size=64 << 10, prioritized_files=[e.name for e in entries if e.data][:1])
    src = BytesSource(blob)
    parsed = open_layer(src)
    go = threading.Event()

    def build_when_told() -> CompactIndex:
        go.wait(10)
        if build_fails:
            raise OSError(errno.ENOSPC, "No space left on device")
        return compact_copy(parsed)

    return LayerFS(parsed, Fetcher(parsed, src, ChunkCache(tmp_path / "cache")), build=build_when_told), go


def test_the_parsed_index_serves_while_the_compact_one_is_built(tmp_path: Path) -> None:
    """A mount goes ahead while its compact index is built: requests are answered from the
    parsed index at once, the same answers; then the parsed index is dropped (filesystem and
    fetcher serve from the built one)."""
    fs, go = held_build(ENTRIES, tmp_path)
    assert fs.inode_count == 0 and not fs.wait_built(0.05)  # never waits
    want = walk(make_fs(tmp_path / "sync")[0])
    assert walk(fs) == want and not fs.wait_built(0)
    assert fs.read(want["etc/big"].ino, 0, len(BIG)) == BIG
    go.set()
    assert fs.wait_built(10)
    assert isinstance(fs.index, CompactIndex) and fs.fetcher.index is fs.index and fs.inode_count > 0
    assert walk(fs) == want and fs.read(want["etc/big"].ino, 5, 100) == BIG[5:105]


def test_a_layer_too_large_to_serve_parsed_waits_for_its_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layer_module, "PARSED_SERVES_UP_TO", len(ENTRIES))
    fs, go = held_build(ENTRIES, tmp_path)
    got: list[dict[str, Attr]] = []
    t = threading.Thread(target=lambda: got.append(walk(fs)))
    t.start()
    t.join(0.3)
    assert t.is_alive() and not got  # the request waits for the index
    go.set()
    t.join(10)
    assert got == [walk(make_fs(tmp_path / "sync")[0])]


def test_a_large_layer_whose_build_fails_gives_eio_not_a_hang(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layer_module, "PARSED_SERVES_UP_TO", 0)
    fs, go = held_build(ENTRIES, tmp_path, build_fails=True)
    go.set()
    assert not fs.wait_built(10)
    with pytest.raises(OSError) as e:
        fs.getattr(ROOT_INO)
    assert e.value.errno == errno.EIO and "No space left" in str(e.value)


def test_a_failed_compact_build_leaves_the_layer_served_from_memory(tmp_path: Path) -> None:
    fs, go = held_build(ENTRIES, tmp_path, build_fails=True)
    go.set()
    assert not fs.wait_built(10) and "No space left" in fs.build_error
    want = walk(make_fs(tmp_path / "sync")[0])
    assert walk(fs) == want and fs.read(want["etc/passwd"].ino, 0, 100) == b"root:x:0:0\n"


def test_open_layer_fs_builds_the_index_file_in_the_background(tmp_path: Path) -> None:
    blob, res = build(ENTRIES, chunk_size=64 << 10, prioritized_files=["etc/passwd"])
    (tmp_path / "blob").write_bytes(blob)
    desc = Descriptor(mt.OCI_LAYER_GZIP, res.blob_digest, len(blob), {mt.ANNOTATION_TOC_DIGEST: res.toc_digest})
    spec = LayerSpec(layer=desc.to_json(), cache_dir=str(tmp_path / "c"), blob_path=str(tmp_path / "blob"))
    saved = tmp_path / "tocs" / "layer"
    fs, _, _, _ = open_layer_fs(spec, ChunkCache(tmp_path / "c"), saved, build_in_background=True)
    assert fs.wait_built(30) and isinstance(fs.index, CompactIndex) and index_path(saved).exists()
    assert walk(fs) == walk(make_fs(tmp_path / "sync")[0])
    again, _, _, _ = open_layer_fs(spec, ChunkCache(tmp_path / "c"), saved, build_in_background=True)
    assert again.inode_count == fs.inode_count  # the file is re-used: nothing to build


ROOT_ENTRIES = [
    Entry("etc/", "dir"),
    Entry("usr/bin/x", data=b"x"),  # usr: an implicit directory
    Entry(".wh.gone", data=b""),  # presented as the whiteout "gone"
    Entry(".wh.back", data=b""),
    Entry("back/", "dir"),  # removed below and made again: a directory, no whiteout
    Entry(".wh..wh..opq", data=b""),  # the root is opaque
    Entry("f", data=b"f"),
    Entry("hl", "hardlink", link="f"),
    Entry(".wh.d", "dir"),  # an odd whiteout that is a directory in the tar
    Entry(".wh.e", "dir"),  # the same, for a name that is there too: e is shown, not counted twice
    Entry("e/", "dir"),
    Entry(".no.prefetch.landmark/", "dir"),  # a landmark's name is hidden, whatever its type
]


EDGE_ENTRIES = [
    Entry("late/f", data=b"f"),
    Entry("late/", "dir", mode=0o700),  # listed after its child: its metadata, same place
    Entry("dup", data=b"first"),
    Entry("dup/", "dir"),  # the name again: the later entry wins
    Entry("dup/k", data=b"k"),
    Entry(".wh.w", data=b""),
    Entry("t", data=b"t"),
    Entry("w", "hardlink", link="t"),  # a hardlink takes the whiteout's name
    Entry("h2", "hardlink", link="w"),  # a hardlink to a hardlink
    Entry(".prefetch.landmark", data=b"\x0f"),
    Entry("tolandmark", "hardlink", link=".prefetch.landmark"),  # its target is hidden: not shown
    Entry("o/.wh..wh..opq", data=b""),
    Entry("o/x", data=b"x"),
    Entry("o/.wh.x", data=b""),  # x wins
    Entry(".wh.sub/", "dir"),  # a whiteout that is a directory with entries
    Entry(".wh.sub/inner", data=b"i"),
    Entry("sub/", "dir"),
    Entry("sub/.wh.inner", data=b""),
]


def dump(fs: LayerFS, n_nodes: int) -> dict[int, object]:
    """Everything the filesystem answers, inode by inode (one past the last, too)."""
    out: dict[int, object] = {}
    for ino in range(1, n_nodes + 2):
        try:
            a = fs.getattr(ino)
        except FileNotFoundError:
            out[ino] = None
            continue
        names = fs.listxattr(ino)
        row: list[object] = [a, names, [fs.getxattr(ino, k) for k in names]]
        if stat.S_ISDIR(a.mode):
            listing = fs.readdir(ino)
            row += [listing, [fs.lookup(ino, name) for name, _ in listing]]
        elif stat.S_ISLNK(a.mode):
            row.append(fs.readlink(ino))
        out[ino] = row
    return out


@pytest.mark.parametrize("entries", [ENTRIES, ROOT_ENTRIES, EDGE_ENTRIES], ids=["files", "root", "edges"])
def test_the_parsed_view_is_the_compact_view(tmp_path: Path, entries: list[Entry]) -> None:
    """Inode numbers, attributes, xattrs, directory listings (their order too) and names that
    are not there: the same from the parsed index as from the compact one, so the kernel
    sees no change when the compact index takes over."""
    fs, go = held_build(entries, tmp_path)
    n_nodes = fs.tree.fs_inodes
    early, early_walk = dump(fs, n_nodes), walk(fs)
    for name in (b"nothere", b"wh.gone", b"opq", b".wh..wh..opq", b".prefetch.landmark", b"tolandmark"):
        with pytest.raises(FileNotFoundError):
            fs.lookup(1, name)
    go.set()
    assert fs.wait_built(10)
    assert dump(fs, n_nodes) == early and walk(fs) == early_walk
    assert fs.inode_count == sum(row is not None for row in early.values())


def test_edges_of_the_overlay_view(tmp_path: Path) -> None:
    fs, go = held_build(EDGE_ENTRIES, tmp_path)
    go.set()
    assert fs.wait_built(10)
    tree = walk(fs)
    assert stat.S_ISDIR(tree["late"].mode) and tree["late"].mode & 0o777 == 0o700 and "late/f" in tree
    assert stat.S_ISDIR(tree["dup"].mode) and "dup/k" in tree
    assert tree["w"] == tree["t"] == tree["h2"] and tree["t"].nlink == 3  # the whiteout gave way
    assert "tolandmark" not in tree and ".prefetch.landmark" not in tree
    assert fs.getxattr(tree["o"].ino, OPAQUE_XATTR) == b"y" and stat.S_ISREG(tree["o/x"].mode)
    assert stat.S_ISCHR(tree["sub"].mode) is False and fs.getxattr(tree["sub"].ino, OPAQUE_XATTR) == b"y"
    assert stat.S_ISCHR(tree["sub/inner"].mode)


def test_the_root_hides_landmarks_of_any_type_while_the_index_is_built(tmp_path: Path) -> None:
    toc = [{"name": n, "type": "dir"} for n in ("etc/", ".prefetch.landmark/", ".no.prefetch.landmark/")]
    body = compress_member(b"\0" * 1024, 6)
    blob = blob_around_toc(body, json.dumps({"version": 1, "entries": toc}).encode())
    src = BytesSource(blob)
    parsed = open_layer(src)
    go = threading.Event()

    def build_slowly() -> CompactIndex:
        go.wait(10)
        return compact_copy(parsed)

    fs = LayerFS(parsed, Fetcher(parsed, src, ChunkCache(tmp_path / "c")), build=build_slowly)
    early = fs.getattr(ROOT_INO)
    go.set()
    assert fs.wait_built(10)
    assert early == fs.getattr(ROOT_INO) and early.nlink == 3  # etc only
