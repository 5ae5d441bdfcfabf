"""Shared helpers for format tests: build a blob from entries, compare with the source tar."""

from __future__ import annotations

import io
import tarfile

from lazypull.format import BuildResult, BytesSource, EntryType, LayerIndex, build_estargz
from lazypull.format.index import normalize
from tests.support.images import Entry, make_tar


def build(entries: list[Entry], **kw: object) -> tuple[bytes, BuildResult]:
    out = io.BytesIO()
    res = build_estargz(io.BytesIO(make_tar(entries)), out, **kw)  # type: ignore[arg-type]
    return out.getvalue(), res


def assert_matches_tar(idx: LayerIndex, blob: bytes, tar: bytes) -> None:
    """Every tar member's content and metadata equals what the index serves."""
    src = BytesSource(blob)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        for m in tf.getmembers():
            e = idx.lookup(m.name)
            assert e is not None, m.name
            assert e.mode == m.mode & 0o7777, m.name
            assert (e.uid, e.gid) == (m.uid, m.gid), m.name
            assert e.mtime_ns == int(m.mtime) * 1_000_000_000, m.name
            xattrs = {
                k[len("SCHILY.xattr.") :]: v.encode("utf-8", "surrogateescape")
                for k, v in m.pax_headers.items()
                if k.startswith("SCHILY.xattr.")
            }
            assert e.xattrs == xattrs, m.name
            if m.isreg():
                assert e.type == EntryType.REG and e.size == m.size, m.name
                f = tf.extractfile(m)
                assert f is not None
                assert idx.read(src, m.name, 0, m.size + 10) == f.read(), m.name
            elif m.isdir():
                assert e.type == EntryType.DIR
            elif m.issym():
                assert e.type == EntryType.SYMLINK and e.link_name == m.linkname
            elif m.islnk():
                assert e.type == EntryType.HARDLINK and e.link_name == normalize(m.linkname)
            elif m.ischr() or m.isblk():
                assert (e.dev_major, e.dev_minor) == (m.devmajor, m.devminor)
            elif m.isfifo():
                assert e.type == EntryType.FIFO
