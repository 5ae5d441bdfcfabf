"""Reading source layer tars (plain or gzip) entry by entry, in a chosen order.

Without prioritized files the source is streamed once. With them, the decompressed
tar is spooled to a temporary file so prioritized entries (and their parent
directories) can be moved to the front, as the reference converter does.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol

from isal import igzip

from lazypull.errors import FormatError
from lazypull.format.index import normalize
from lazypull.format.lastwins import LastWins
from lazypull.format.limits import check_path
from lazypull.format.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME
from lazypull.format.whiteout import whiteout_target

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_SKIP = frozenset({PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK, TOC_TAR_NAME})

Member = tuple[tarfile.TarInfo, "BinaryIO | None"]


class Readable(Protocol):
    """A binary stream read front to back: a file, a registry response, a VerifyingReader."""

    def read(self, size: int = -1, /) -> bytes: ...


def open_decompressed(src: Readable) -> BinaryIO:
    """*src* as a plain tar stream, transparently decompressing gzip."""
    buffered = src if isinstance(src, io.BufferedReader) else io.BufferedReader(_Raw(src), 1 << 20)
    head = buffered.peek(2)[:2]
    if head == b"\x1f\x8b":
        # isal leaves IGzipFile unannotated; a GzipFile reads like a BinaryIO
        return igzip.IGzipFile(fileobj=buffered, mode="rb")  # type: ignore[no-untyped-call,return-value]
    if head[:1] == b"\x28" and buffered.peek(4)[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
    return buffered


class _Raw(io.RawIOBase):
    def __init__(self, f: Readable) -> None:
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b: WriteableBuffer) -> int:
        view = memoryview(b)
        data = self._f.read(len(view))
        n = len(data)
        view[:n] = data
        return n


class NameNotUTF8Error(FormatError):
    """A tar name or link target that is not UTF-8: a TOC (JSON) cannot carry it exactly."""


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check(ti: tarfile.TarInfo) -> None:
    check_path(ti.name, "tar entry")
    whiteout_target(normalize(ti.name))  # an invalid whiteout would make an unreadable layer
    if not (ti.isreg() or ti.isdir() or ti.issym() or ti.islnk() or ti.ischr() or ti.isblk() or ti.isfifo()):
        raise FormatError(f"{ti.name}: unsupported tar entry type {ti.type!r}")
    for what, text in (("name", ti.name), ("link target", ti.linkname)):
        if not _utf8(text):
            shown = text.encode("utf-8", "surrogateescape")
            raise NameNotUTF8Error(f"tar entry {what} {shown!r} is not UTF-8; a TOC cannot name it exactly")


def _payload(tf: tarfile.TarFile, ti: tarfile.TarInfo) -> BinaryIO | None:
    """The entry's content; a sparse file (GNU or PAX) becomes a regular one, holes as zeros."""
    f = tf.extractfile(ti) if ti.isreg() and ti.size else None
    if ti.issparse():
        ti.type, ti.sparse = tarfile.REGTYPE, None
        ti.pax_headers = {k: v for k, v in ti.pax_headers.items() if not k.startswith("GNU.sparse.")}
    return f  # type: ignore[return-value]


# A fixed list, or a function from the layer's entry names (tar order) to a list
# (prefetch profiles with glob patterns need the names first).
Prioritized = Sequence[str] | Callable[[Sequence[str]], Sequence[str]]


def iter_members(src: BinaryIO, prioritized: Prioritized | None = None) -> tuple[Iterator[Member], bool]:
    """Entries of the source tar in output order; the bool says if any file was prioritized."""
    plain = open_decompressed(src)
    if not prioritized:
        return _stream(plain), False
    spool = tempfile.TemporaryFile(prefix="lazypull-spool-")  # noqa: SIM115 - closed by the generator
    shutil.copyfileobj(plain, spool, 1 << 20)
    spool.seek(0)
    tf = _open_tar(spool, "r:")
    members = last_wins([m for m in tf.getmembers() if normalize(m.name) not in _SKIP])
    for m in members:
        _check(m)
    wanted = prioritized([m.name for m in members]) if callable(prioritized) else prioritized
    order = _prioritize(members, wanted)
    moved = len(order) > 0
    by_id = {id(m) for m in order}
    rest = [m for m in members if id(m) not in by_id]

    def gen() -> Iterator[Member]:
        try:
            for m in [*order, None, *rest]:
                if m is None:
                    yield _LANDMARK_MARK
                    continue
                yield m, _payload(tf, m)
        finally:
            tf.close()
            spool.close()

    return gen(), moved


# Sentinel yielded between prioritized and other entries.
_LANDMARK_MARK: Member = (tarfile.TarInfo(PREFETCH_LANDMARK), None)


def is_landmark_mark(m: Member) -> bool:
    return m is _LANDMARK_MARK


def _open_tar(f: BinaryIO, mode: Literal["r:", "r|"]) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=f, mode=mode, encoding="utf-8", errors="surrogateescape")
    except tarfile.TarError as e:
        raise FormatError(f"source layer is not a valid tar: {e}") from None


def _stream(plain: BinaryIO) -> Iterator[Member]:
    tf = _open_tar(plain, "r|")
    try:
        while True:
            try:
                ti = tf.next()
            except tarfile.TarError as e:
                raise FormatError(f"source layer tar is corrupt: {e}") from None
            except EOFError:
                raise FormatError("source layer tar is truncated") from None
            if ti is None:
                break
            if normalize(ti.name) in _SKIP:
                continue
            _check(ti)
            yield ti, _payload(tf, ti)
    finally:
        tf.close()


def _merge_dir(earlier: tarfile.TarInfo, later: tarfile.TarInfo) -> None:
    earlier.mode, earlier.uid, earlier.gid, earlier.mtime = later.mode, later.uid, later.gid, later.mtime
    earlier.uname, earlier.gname, earlier.pax_headers = later.uname, later.gname, later.pax_headers


def _rename(ti: tarfile.TarInfo, name: str, as_file: bool) -> None:
    if as_file:
        ti.name = name
    else:
        ti.linkname = name


def last_wins(members: list[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    """The entries extraction leaves, in source order (reordering must not change which
    duplicate wins)."""
    names: LastWins[tarfile.TarInfo] = LastWins(_merge_dir, _rename)
    for m in members:
        kind = "dir" if m.isdir() else "reg" if m.isreg() else "hardlink" if m.islnk() else "other"
        names.add(normalize(m.name), kind, normalize(m.linkname) if m.islnk() else "", m)
    return names.items() if names.replaced else members


def _prioritize(members: list[tarfile.TarInfo], prioritized: Sequence[str]) -> list[tarfile.TarInfo]:
    """Prioritized entries in the given order, each preceded by its not-yet-moved parents."""
    by_name: dict[str, tarfile.TarInfo] = {}
    for m in members:
        by_name[normalize(m.name)] = m  # later duplicates win, like tar extraction
    moved: list[tarfile.TarInfo] = []
    seen: set[str] = set()

    for p in prioritized:
        n = normalize(p)
        if n not in by_name or n in seen:
            continue
        chain = []  # n and its not-yet-moved ancestors, deepest first (iterative: paths can be deep)
        while n and n not in seen and n in by_name:
            chain.append(n)
            n = n.rpartition("/")[0]
        for name in reversed(chain):
            seen.add(name)
            moved.append(by_name[name])
    return moved
