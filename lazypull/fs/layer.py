"""One layer as a read-only filesystem: the inode tree from its compact index, reads via
the fetcher.

Presented the way overlayfs expects a lower layer (:mod:`lazypull.format.overlayview`):
``.wh.NAME`` becomes a 0/0 character device named NAME, ``.wh..wh..opq`` marks its
directory opaque with the ``trusted.overlay.opaque`` xattr, and the prefetch landmarks
are hidden. That view is computed when the index is written; here each request decodes
the records it needs. Until a new layer's compact index is written, the same view comes
from its parsed index (:mod:`lazypull.fs.parsedtree`).
"""

from __future__ import annotations

import errno
import logging
import stat
import threading
from collections.abc import Callable, Iterator, Sized

from lazypull.errors import FormatError
from lazypull.format.compactindex import FS_OPAQUE, FS_WHITEOUT, NONE, TYPE_CODE, CompactIndex, Node
from lazypull.format.compactwrite import compact_copy
from lazypull.format.index import Entry, EntryType, LayerIndex
from lazypull.fs.accesslog import AccessLog
from lazypull.fs.fetcher import Fetcher, FetchError
from lazypull.fs.fuse.ops import Attr
from lazypull.fs.parsedtree import ParsedTree
from lazypull.giveway import Build, builds

OPAQUE_XATTR = b"trusted.overlay.opaque"

_TYPE_BITS = {
    EntryType.DIR: stat.S_IFDIR,
    EntryType.REG: stat.S_IFREG,
    EntryType.SYMLINK: stat.S_IFLNK,
    EntryType.CHAR: stat.S_IFCHR,
    EntryType.BLOCK: stat.S_IFBLK,
    EntryType.FIFO: stat.S_IFIFO,
}
_REG, _DIR, _SYMLINK = TYPE_CODE[EntryType.REG], TYPE_CODE[EntryType.DIR], TYPE_CODE[EntryType.SYMLINK]
_DEVICES = (TYPE_CODE[EntryType.CHAR], TYPE_CODE[EntryType.BLOCK])
# How long a request (or an unmount) waits for a compact index still being written (a
# 100k-entry layer takes about a second): longer means the build thread is starved or stuck.
BUILD_WAIT = 120.0
# Layers of up to this many entries are served from their parsed index while the compact one
# is built. Beyond it requests wait: views of directories with hundreds of thousands of
# entries would add to the peak such a layer's build already has (the largest TOC the
# default limits admit, 300,000 entries in one directory: 863 MB instead of under 512 MB).
PARSED_SERVES_UP_TO = 200_000
log = logging.getLogger(__name__)


class LayerFS:
    """The overlay view of one layer, answered from its compact index: no per-inode Python
    objects (inode numbers, directory entries and flags come from the index)."""

    def __init__(
        self,
        index: LayerIndex,
        fetcher: Fetcher,
        build: Callable[[], LayerIndex] | None = None,
        on_built: Callable[[], None] | None = None,
    ) -> None:
        """With *build* (which returns the index to serve from, usually the compact form of
        *index*), that index is made in the background (:mod:`lazypull.giveway`): a mount need
        not wait for it, and until it is ready (or if its build fails) requests are answered
        from *index* itself. *on_built* is called once the build ended (or was dropped): the
        parsed index's memory is the layer server's to give to others then."""
        self.index = index
        self.fetcher = fetcher
        self._tree: CompactIndex | None = None
        self._built = threading.Event()
        self.build_error = ""
        self.bytes_served = 0
        self.accessed: AccessLog | None = None  # the files read and how, when recording
        self._parsed: ParsedTree | None = None  # answers while the compact index is built
        self._pending: Build | None = None
        self._lock = threading.Lock()
        self._waiters: list[Callable[[], None]] = []  # called once the build ends (when_built)
        self._on_built = on_built
        if build is None:
            self._serve_from(index)
        else:
            entries = len(index) if isinstance(index, Sized) else None
            if entries is not None and entries <= PARSED_SERVES_UP_TO:
                self._parsed = ParsedTree(index)
            # Deferred while the parsed index answers (giveway.py); a layer that cannot wait goes first.
            self._pending = builds.submit(lambda: self._build(build), entries or 0, defer=self._parsed is not None)

    def _serve_from(self, index: LayerIndex) -> None:
        # Other indexes (SOCI) get an in-memory compact tree; reads still go through *index*.
        tree = index if isinstance(index, CompactIndex) else compact_copy(index)
        self.index = index  # the one built replaces the parsed one (its memory goes)
        if self.fetcher is not None:  # (None: measuring the tree alone)
            self.fetcher.index = index
        self._tree = tree
        self._parsed = None  # its views and the parsed index go
        self._finish()

    def _finish(self) -> None:
        with self._lock:
            self._built.set()
            waiters, self._waiters = self._waiters, []
            self._pending = None  # its closure holds the parsed index: that memory goes now
            on_built, self._on_built = self._on_built, None
        for w in waiters:
            try:
                w()
            except Exception:
                log.exception("a request waiting for a layer's index could not be handed on")
        if on_built is not None:
            on_built()

    def _build(self, build: Callable[[], LayerIndex]) -> None:
        try:
            self._serve_from(build())
        except Exception as e:  # the parsed index keeps serving (in memory): nothing is lost
            log.error("building the compact index of a layer failed (it is served from memory): %s", e)
            self.build_error = str(e) or type(e).__name__
            self._finish()

    def cancel_build(self) -> None:
        """Drop a build that has not started (the layer goes away); one under way is waited for
        with :meth:`wait_built`."""
        pending = self._pending
        if pending is not None and pending.cancel():
            self.build_error = "cancelled"
            self._finish()

    def wait_built(self, timeout: float | None = None) -> bool:
        """True once the compact index serves (False while building or if its build failed)."""
        return self._built.wait(timeout) and self._tree is not None

    @property
    def ready(self) -> bool:
        """Whether a request is answered without waiting for the index build."""
        return self._tree is not None or self._parsed is not None or self._built.is_set()

    def when_built(self, then: Callable[[], None]) -> bool:
        """Have *then* called (in the build's thread) once the layer is :attr:`ready`; False,
        and no call, if it is ready now. The request loop parks requests this way instead of
        holding a thread on a build queued behind other layers' builds."""
        with self._lock:
            if self.ready:
                return False
            self._waiters.append(then)
            return True

    def close(self) -> None:
        """Release the mapped index file (its mapping and the fd it holds): the layer is gone.
        Requests still being answered get EIO, not bytes of an unmapped file."""
        self.cancel_build()
        for index in (self._tree, self.index):
            if isinstance(index, CompactIndex):
                index.close()

    @property
    def tree(self) -> CompactIndex | ParsedTree:
        """The compact index, or while it is built (or if its build failed) the parsed one;
        a layer too large to be served from its parsed index waits (EIO if the build fails)."""
        tree = self._tree
        if tree is None:
            parsed = self._parsed
            if parsed is not None:
                return parsed
            if not self._built.wait(BUILD_WAIT):
                raise OSError(errno.EIO, "the layer's index is still being built")
            tree = self._tree
            if tree is None:
                raise OSError(errno.EIO, f"the layer's index could not be built: {self.build_error}")
        return tree

    # -- ReadOnlyFS ---------------------------------------------------------------------
    def _node(self, ino: int) -> Node:
        return self.tree.node(self._node_id(ino))

    def _node_id(self, ino: int) -> int:
        i = self.tree.node_of_inode(ino)
        if i is None:
            raise FileNotFoundError(errno.ENOENT, "no such inode")
        return i

    def _file(self, ino: int) -> Entry:
        """The entry whose chunks a read of *ino* fetches."""
        e = self.tree.entry(self._node_id(ino))
        if self.tree is not self.index:
            e = self.index.lookup(e.name) or e
        return e

    def getattr(self, ino: int) -> Attr:
        i = self._node_id(ino)
        r = self.tree.attr_fields(i)  # the raw record: this is the hottest call
        t, flags, mode, uid, gid, mtime = r[0], r[1], r[2], r[9], r[10], r[12] * 1_000_000_000 + r[13]
        if flags & FS_WHITEOUT:
            return Attr(ino, stat.S_IFCHR, 1, uid, gid, 0, 0, mtime)
        if t == _REG:
            return Attr(ino, stat.S_IFREG | mode & 0o7777, r[14], uid, gid, 0, r[11], mtime)
        if t == _DIR:
            return Attr(ino, stat.S_IFDIR | mode & 0o7777, r[22], uid, gid, 0, 0, mtime)  # 2 + subdirectories
        if t == _SYMLINK:  # size: the target's length; permissions as Linux shows symlinks
            return Attr(ino, stat.S_IFLNK | 0o777, r[14], uid, gid, 0, r[19], mtime)
        nd = self.tree.node(i)  # checks the type code
        rdev = 0
        if t in _DEVICES:
            major, minor = self.tree.dev(nd)
            rdev = major << 8 | (minor & 0xFF) | ((minor & ~0xFF) << 12)
        bits = _TYPE_BITS.get(nd.entry_type)
        if bits is None:
            raise FormatError(f"compact index: inode {ino} is a {nd.entry_type}")
        return Attr(ino, bits | mode & 0o7777, r[14], uid, gid, rdev, 0, mtime)

    def _dir(self, ino: int) -> Node:
        nd = self._node(ino)
        if nd.entry_type != EntryType.DIR:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        return nd

    def lookup(self, parent: int, name: bytes) -> Attr:
        ino = self.tree.find_dirent(self._dir(parent), name)
        if ino is None:
            raise FileNotFoundError(errno.ENOENT, "no such file")
        return self.getattr(ino)

    def readdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        return [(name, self.getattr(child)) for name, child in self.dirents(ino)]

    def dirents(self, ino: int) -> Iterator[tuple[bytes, int]]:
        """(name, inode) of a directory's entries, without their attributes (a listing of
        hundreds of thousands need not hold them all)."""
        tree = self.tree  # (one tree for both steps: the build may replace it meanwhile)
        i = tree.node_of_inode(ino)
        if i is None:
            raise FileNotFoundError(errno.ENOENT, "no such inode")
        nd = tree.node(i)
        if nd.entry_type != EntryType.DIR:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        return tree.iter_dirents(nd) if isinstance(tree, CompactIndex) else iter(tree.dirents(nd))

    def readlink(self, ino: int) -> bytes:
        nd = self._node(ino)
        if nd.entry_type != EntryType.SYMLINK or nd.flags & FS_WHITEOUT:
            raise OSError(errno.EINVAL, "not a symlink")
        return self.tree.link(nd)

    def read(self, ino: int, offset: int, size: int) -> bytes:
        nd = self._node(ino)
        t = nd.entry_type
        if t != EntryType.REG or nd.flags & FS_WHITEOUT:
            raise (
                IsADirectoryError(errno.EISDIR, "not a regular file")
                if t == EntryType.DIR
                else OSError(errno.EINVAL, "not a regular file")
            )
        e = self._file(ino)
        try:
            data = self.fetcher.read(e, offset, size)
            self.bytes_served += len(data)
            if self.accessed is not None:
                self.accessed.note(e.name, offset, len(data))
            return data
        except FetchError as err:
            raise OSError(errno.EIO, str(err)) from None

    def listxattr(self, ino: int) -> list[bytes]:
        nd = self._node(ino)
        names = [k.encode("utf-8", "surrogateescape") for k in self.tree.xattrs(nd)]
        if nd.flags & FS_OPAQUE:
            names.append(OPAQUE_XATTR)
        return names

    def getxattr(self, ino: int, name: bytes) -> bytes:
        nd = self._node(ino)
        if name == OPAQUE_XATTR and nd.flags & FS_OPAQUE:
            return b"y"
        v = self.tree.xattrs(nd).get(name.decode("utf-8", "surrogateescape"))
        if v is None:
            raise OSError(errno.ENODATA, "no such attribute")
        return v

    def passthrough_fd(self, ino: int) -> int | None:
        """An fd on a cache file holding the whole file, verified through that fd, once every
        chunk is cached. A corrupted file is dropped and assembled again from verified chunks
        (themselves re-fetched if they fail their check)."""
        try:
            nd = self._node(ino)
        except FileNotFoundError:
            return None
        if nd.entry_type != EntryType.REG or nd.flags & FS_WHITEOUT or not nd.size or nd.digest == NONE:
            return None
        e = self._file(ino)
        if not e.digest:
            return None
        cache = self.fetcher.cache
        had = cache.path_of(e.digest) is not None
        fd = cache.open_verified(e.digest)
        if fd is not None:
            return fd
        if had:
            self.fetcher.stats.add(verify_errors=1)
        if not all(cache.contains(c.digest) for c in e.chunks):
            return None
        try:
            if cache.put_parts(e.digest, (self.fetcher.chunk(e, c) for c in e.chunks)) is None:
                return None
        except FetchError:
            return None
        return cache.open_verified(e.digest)

    def statfs(self) -> tuple[int, int]:
        tree = self._tree
        if tree is None:  # overlayfs asks at mount; the count is an upper bound until built
            index = self.index
            return index.blob_size, (len(index) if isinstance(index, Sized) else 0) + 1
        return self.index.blob_size, tree.shown_inodes + 1

    @property
    def inode_count(self) -> int:
        """Inodes shown (0 while the compact index is being built: never waits)."""
        tree = self._tree
        return tree.shown_inodes if tree is not None else 0
