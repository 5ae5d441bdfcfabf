"""Materialise an image's rootfs in a directory, layer by layer, without leaving it.

eStargz layers are read file by file through their verified index (not by untarring
the blob); other layers are applied as plain tars. OCI whiteouts (``.wh.NAME``) and
opaque directories (``.wh..wh..opq``) are applied before each layer's own entries.
Every path is resolved with ``openat`` and ``O_NOFOLLOW`` from the root's fd, so a
symlink planted by one layer can never redirect a write outside the target directory.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from lazypull.convert.check import iter_chunk_data, manifests_of
from lazypull.errors import FormatError, LazypullError
from lazypull.format import open_layer
from lazypull.format.estargz_reader import safe_name
from lazypull.format.index import Entry, EntryType
from lazypull.format.limits import DEFAULT_LIMITS, Limits
from lazypull.format.tarstream import open_decompressed
from lazypull.format.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK
from lazypull.format.whiteout import OPAQUE, is_whiteout, whiteout_target
from lazypull.oci import mediatypes as mt
from lazypull.oci.store import ImageStore, VerifyingReader
from lazypull.oci.types import Descriptor, Platform

LANDMARKS = frozenset({PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePathError(LazypullError):
    """A layer tried to write through a symlink or outside the target directory."""


@dataclass
class Item:
    """One entry to materialise, independent of the layer format."""

    name: str
    type: EntryType
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    link: str = ""
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


class RootDir:
    """Writes under one directory through fds; refuses anything that would leave it."""

    def __init__(self, path: Path) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(path, _DIR_FLAGS)
        except (FileExistsError, NotADirectoryError):
            raise LazypullError(f"{path} is not a directory (or lies under a file)") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafePathError(f"{path} is a symlink; give the real directory") from None
            raise LazypullError(f"cannot use {path} as the target directory: {e.strerror}") from None
        self.path = path
        self.dir_times: dict[str, int] = {}
        self.files = 0  # entries other than directories written so far, and their bytes
        self.bytes_written = 0
        self.on_progress: Callable[[], None] | None = None

    def counted(self, files: int, nbytes: int) -> None:
        """Count what was written (for a progress display)."""
        self.files += files
        self.bytes_written += nbytes
        if self.on_progress is not None:
            self.on_progress()

    def close(self) -> None:
        os.close(self.fd)

    def parent_fd(self, name: str, create: bool = True) -> tuple[int, str]:
        """An fd of *name*'s parent directory (created as needed) and the base name."""
        parts = name.split("/")
        if any(p in ("", ".", "..") or "\0" in p for p in parts):
            # Layer readers normalise names; this is the last line of defence.
            raise UnsafePathError(f"refusing to write {name[:200]!r}: not a plain relative path")
        fd = os.dup(self.fd)
        try:
            for comp in parts[:-1]:
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafePathError(
                            f"refusing to write {name!r}: {comp!r} is a symlink or not a directory"
                        ) from None
                    raise
                os.close(fd)
                fd = nfd
            return fd, parts[-1]
        except BaseException:
            os.close(fd)
            raise

    def remove(self, name: str) -> None:
        try:
            pfd, base = self.parent_fd(name, create=False)
        except (FileNotFoundError, UnsafePathError):
            return
        try:
            _remove_at(pfd, base)
        finally:
            os.close(pfd)

    def clear_dir(self, name: str) -> None:
        """Remove everything inside directory *name* (an opaque directory's lower contents)."""
        try:
            fd = os.open(name or ".", _DIR_FLAGS, dir_fd=self.fd) if name else os.dup(self.fd)
        except OSError:
            return
        try:
            for child in os.listdir(fd):
                _remove_at(fd, child)
        finally:
            os.close(fd)

    def write(self, item: Item, data: Iterator[bytes] | None = None, hardlink_target: str | None = None) -> None:
        pfd, base = self.parent_fd(item.name)
        try:
            self._write_at(pfd, base, item, data, hardlink_target)
        finally:
            os.close(pfd)

    def _write_at(
        self, pfd: int, base: str, item: Item, data: Iterator[bytes] | None, hardlink_target: str | None
    ) -> None:
        t = item.type
        if t == EntryType.DIR:
            try:
                st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    _remove_at(pfd, base)
                    os.mkdir(base, 0o700, dir_fd=pfd)
            except FileNotFoundError:
                os.mkdir(base, 0o700, dir_fd=pfd)
            self.dir_times[item.name] = item.mtime_ns
        else:
            _remove_at(pfd, base)
            if t == EntryType.HARDLINK:
                assert hardlink_target is not None
                try:
                    tpfd, tbase = self.parent_fd(hardlink_target, create=False)
                    try:
                        os.link(tbase, base, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
                    finally:
                        os.close(tpfd)
                except (FileNotFoundError, NotADirectoryError):
                    raise FormatError(
                        f"hardlink {item.name[:200]!r} points at {hardlink_target[:200]!r}, which does not exist"
                    ) from None
                except PermissionError:
                    raise FormatError(
                        f"hardlink {item.name[:200]!r} points at {hardlink_target[:200]!r}, which is not a file"
                    ) from None
                return  # a hardlink shares the target's metadata
            if t == EntryType.REG:
                fd = os.open(
                    base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd
                )
                with os.fdopen(fd, "wb") as f:
                    for part in data or ():
                        f.write(part)
                        self.counted(0, len(part))
            elif t == EntryType.SYMLINK:
                os.symlink(item.link, base, dir_fd=pfd)
            elif t in (EntryType.CHAR, EntryType.BLOCK, EntryType.FIFO):
                kind = {EntryType.CHAR: stat.S_IFCHR, EntryType.BLOCK: stat.S_IFBLK, EntryType.FIFO: stat.S_IFIFO}[t]
                os.mknod(base, kind | 0o600, os.makedev(item.dev_major, item.dev_minor), dir_fd=pfd)
            self.counted(1, 0)
        self._meta(pfd, base, item)

    def open_file(self, name: str) -> int:
        """A new, empty regular file (replacing what was there) open for writing."""
        pfd, base = self.parent_fd(name)
        try:
            _remove_at(pfd, base)
            return os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        finally:
            os.close(pfd)

    def set_xattr(self, name: str, key: str, value: bytes) -> None:
        pfd, base = self.parent_fd(name) if name else (os.dup(self.fd), ".")
        try:
            os.setxattr(f"/proc/self/fd/{pfd}/{base}", key, value, follow_symlinks=False)
        finally:
            os.close(pfd)

    def set_meta(self, item: Item) -> None:
        pfd, base = self.parent_fd(item.name, create=False)
        try:
            self._meta(pfd, base, item)
        finally:
            os.close(pfd)

    def _meta(self, pfd: int, base: str, item: Item) -> None:
        os.chown(base, item.uid, item.gid, dir_fd=pfd, follow_symlinks=False)
        if item.type != EntryType.SYMLINK:
            os.chmod(base, item.mode & 0o7777, dir_fd=pfd)
        for k, v in item.xattrs.items():
            path = f"/proc/self/fd/{pfd}/{base}"
            try:
                os.setxattr(path, k, v, follow_symlinks=False)
            except OSError as e:
                raise LazypullError(f"{item.name}: cannot set xattr {k!r}: {e.strerror}") from None
        if item.type != EntryType.DIR:
            os.utime(base, ns=(item.mtime_ns, item.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    def finish(self) -> None:
        """Directory mtimes last: creating children would change them."""
        for name, mtime in sorted(self.dir_times.items(), key=lambda kv: -kv[0].count("/")):
            try:
                pfd, base = self.parent_fd(name, create=False)
            except (FileNotFoundError, UnsafePathError):
                continue
            try:
                os.utime(base, ns=(mtime, mtime), dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            finally:
                os.close(pfd)


def _remove_at(pfd: int, base: str) -> None:
    """Remove *base* in directory *pfd*, a whole tree without following symlinks.

    Depth first with an explicit stack (one fd per level), not recursion: a layer can
    make trees deeper than Python's recursion limit."""
    try:
        st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(base, dir_fd=pfd)
        return
    top = os.open(base, _DIR_FLAGS, dir_fd=pfd)
    stack: list[tuple[int, Iterator[str]]] = [(top, iter(os.listdir(top)))]
    names = [base]
    try:
        while stack:
            fd, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                os.close(fd)
                os.rmdir(names.pop(), dir_fd=stack[-1][0] if stack else pfd)
                continue
            st = os.stat(child, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                cfd = os.open(child, _DIR_FLAGS, dir_fd=fd)
                stack.append((cfd, iter(os.listdir(cfd))))
                names.append(child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        for fd, _ in stack:
            os.close(fd)


def _whiteouts(names: list[str]) -> tuple[list[str], list[str]]:
    """(paths to delete, directories made opaque) declared by a layer; FormatError for a
    whiteout whose target is not a plain name (``.wh...`` would delete the target's parent)."""
    removed, opaque = [], []
    for n in names:
        parent, _, base = n.rpartition("/")
        if base == OPAQUE:
            opaque.append(parent)
        elif (target := whiteout_target(n)) is not None:
            removed.append(target)
    return removed, opaque


def apply_estargz_layer(root: RootDir, store: ImageStore, desc: Descriptor) -> None:
    src = store.blob_source(desc)
    idx = open_layer(src, toc_digest=desc.annotations[mt.ANNOTATION_TOC_DIGEST])
    entries = [e for e in idx.entries() if e.name and not e.implicit and e.name not in LANDMARKS]
    removed, opaque = _whiteouts([e.name for e in entries])
    for d in opaque:
        root.clear_dir(d)
    for r in removed:
        root.remove(r)
    for e in entries:
        if is_whiteout(e.name) or e.type == EntryType.HARDLINK:
            continue
        if e.type != EntryType.REG or e.size == 0:
            root.write(_item_from_entry(e), iter(()))
    # File contents in blob order, from one sequential pass of large verified reads.
    # A file is complete when all its bytes are written: a crafted TOC may put its chunks
    # in any blob order, and reopening a finished file would truncate it.
    open_fds: dict[str, int] = {}
    left: dict[str, int] = {}
    try:
        for e, c, data in iter_chunk_data(idx, src):
            if is_whiteout(e.name) or e.name in LANDMARKS:
                continue
            fd = open_fds.get(e.name)
            if fd is None:
                fd = open_fds[e.name] = root.open_file(e.name)
                left[e.name] = e.size
                root.counted(1, 0)
            os.pwrite(fd, data, c.file_offset)
            root.counted(0, len(data))
            left[e.name] -= c.size
            if left[e.name] == 0:
                os.close(open_fds.pop(e.name))
                root.set_meta(_item_from_entry(e))
    finally:
        for fd in open_fds.values():
            os.close(fd)
    for e in entries:
        if e.type == EntryType.HARDLINK and not is_whiteout(e.name):
            root.write(_item_from_entry(e), hardlink_target=e.link_name)


def _item_from_entry(e: Entry) -> Item:
    return Item(e.name, e.type, e.mode, e.uid, e.gid, e.mtime_ns, e.link_name, e.dev_major, e.dev_minor, e.xattrs)


_TAR_TYPES = {
    tarfile.DIRTYPE: EntryType.DIR,
    tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.LNKTYPE: EntryType.HARDLINK,
    tarfile.CHRTYPE: EntryType.CHAR,
    tarfile.BLKTYPE: EntryType.BLOCK,
    tarfile.FIFOTYPE: EntryType.FIFO,
}


def apply_tar_layer(
    root: RootDir,
    store: ImageStore,
    desc: Descriptor,
    tmpdir: str | None = None,
    *,
    overlay_lower: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """Apply a tar layer. With *overlay_lower*, whiteouts are not applied but written the
    way overlayfs reads a lower layer (0/0 char devices, ``trusted.overlay.opaque``).

    Two passes over the spooled tar, one entry at a time: the first finds the whiteouts
    (they apply before the layer's own entries) and checks every name, the second writes.
    Memory stays flat however many entries a (possibly crafted) layer has."""
    with tempfile.TemporaryFile(dir=tmpdir) as spool:
        with VerifyingReader(store.open_blob(desc), desc) as raw:
            shutil.copyfileobj(open_decompressed(raw), spool, 1 << 20)
        names = (safe_name(m.name, limits) for _, m in _iter_tar(spool, desc, limits))
        removed, opaque = _whiteouts([n for n in names if is_whiteout(n)])
        if overlay_lower:
            for r in removed:
                root.write(Item(r, EntryType.CHAR))
        else:
            for d in opaque:
                root.clear_dir(d)
            for r in removed:
                root.remove(r)
        for tf, m in _iter_tar(spool, desc, limits):
            name = safe_name(m.name, limits)
            if not name or is_whiteout(name):
                continue
            typ = _TAR_TYPES.get(m.type, EntryType.REG if m.isreg() else None)
            if typ is None:
                raise FormatError(f"{m.name[:200]}: unsupported tar entry type {m.type!r}")
            xattrs = {
                k[13:]: v.encode("utf-8", "surrogateescape")
                for k, v in m.pax_headers.items()
                if k.startswith("SCHILY.xattr.")
            }
            item = Item(
                name,
                typ,
                m.mode,
                m.uid,
                m.gid,
                int(m.mtime) * 1_000_000_000,
                m.linkname,
                m.devmajor,
                m.devminor,
                xattrs,
            )
            if typ == EntryType.REG:
                f = tf.extractfile(m)
                root.write(item, iter(lambda f=f: f.read(1 << 20), b"") if f else None)  # type: ignore[misc]
            elif typ == EntryType.HARDLINK:
                root.write(item, hardlink_target=safe_name(m.linkname, limits))
            else:
                root.write(item)
        if overlay_lower:
            for d in opaque:
                root.set_xattr(d, "trusted.overlay.opaque", b"y")
        root.finish()


def _iter_tar(spool: BinaryIO, desc: Descriptor, limits: Limits) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """The members of the spooled tar from its start, one at a time and not kept (tarfile
    would keep every TarInfo, ~0.5 KB each), at most ``limits.max_entries`` of them."""
    spool.seek(0)
    try:
        tf = tarfile.open(fileobj=spool, mode="r:", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
    except tarfile.TarError as e:
        raise FormatError(f"layer {desc.digest} is not a valid tar: {e}") from None
    with tf:
        for n in itertools.count(1):
            try:
                m = tf.next()
            except tarfile.TarError as e:
                raise FormatError(f"layer {desc.digest} is not a valid tar: {e}") from None
            if m is None:
                return
            tf.members.clear()  # type: ignore[attr-defined]  # a TarFile attribute typeshed leaves out
            if n > limits.max_entries:
                raise FormatError(f"layer {desc.digest} has more than {limits.max_entries} entries (max_entries)")
            yield tf, m


def unpack_image(
    store: ImageStore,
    dest: Path,
    *,
    platform: Platform | None = None,
    progress: Callable[[int, int, int, int], None] | None = None,
) -> int:
    """Unpack the image's rootfs into *dest*; returns the number of layers applied.
    *progress* is told (layers done, layers, files written, bytes written) as it goes."""
    manifest = next(iter(manifests_of(store, platform, False)))
    root = RootDir(dest)
    done, layers = 0, len(manifest.layers)
    if progress is not None:
        root.on_progress = lambda: progress(done, layers, root.files, root.bytes_written)
        progress(0, layers, 0, 0)
    try:
        for layer in manifest.layers:
            if mt.ANNOTATION_TOC_DIGEST in layer.annotations:
                apply_estargz_layer(root, store, layer)
            else:
                apply_tar_layer(root, store, layer)
            done += 1
            root.counted(0, 0)
        root.finish()
    finally:
        root.close()
    return len(manifest.layers)
