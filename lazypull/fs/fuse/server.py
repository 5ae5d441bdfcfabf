"""A read-only FUSE session on /dev/fuse: mount, INIT, request dispatch, replies.

Replies ask the kernel to cache entries, attributes, symlinks and pages for a long time
(the layer is immutable), and OPEN is declined for files without passthrough so the
kernel keeps opens and page cache without asking again. Which thread reads which fd is
:mod:`lazypull.fs.fuse.loop`'s business: one loop serves every session of a process.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import select
import stat
import struct
import threading
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lazypull.fs.fuse import protocol as p
from lazypull.fs.fuse.mounts import MountRef
from lazypull.fs.fuse.ops import Attr, ReadOnlyFS

log = logging.getLogger(__name__)

TIMEOUT = 86400  # seconds the kernel may cache entries and attributes (layers never change)
MAX_READ = 1 << 20
BUFSIZE = MAX_READ + 4096 * 2
_libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4
MNT_DETACH = 2
DT = {stat.S_IFDIR: 4, stat.S_IFREG: 8, stat.S_IFLNK: 10, stat.S_IFCHR: 2, stat.S_IFBLK: 6, stat.S_IFIFO: 1}


def mount_fuse(mountpoint: str, fsname: str = "lazypull", allow_other: bool = True, read_only: bool = True) -> int:
    """Open /dev/fuse and mount it at *mountpoint*, read-only unless told (needs CAP_SYS_ADMIN)."""
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    st = os.stat(mountpoint)
    opts = f"fd={fd},rootmode={stat.S_IFMT(st.st_mode) | 0o755:o},user_id=0,group_id=0,default_permissions"
    if allow_other:
        opts += ",allow_other"
    rc = _libc.mount(
        fsname.encode(),
        mountpoint.encode(),
        b"fuse.lazypull",
        (MS_RDONLY if read_only else 0) | MS_NODEV,
        opts.encode(),
    )
    if rc != 0:
        e = ctypes.get_errno()
        os.close(fd)
        raise OSError(e, f"mounting FUSE at {mountpoint} failed: {os.strerror(e)}")
    return fd


def unmount(mountpoint: str, lazy: bool = True) -> None:
    rc = _libc.umount2(mountpoint.encode(), MNT_DETACH if lazy else 0)
    if rc != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):
            raise OSError(e, f"unmounting {mountpoint} failed: {os.strerror(e)}")


@dataclass
class InitParams:
    """What INIT negotiated for a connection; a successor serving the same fd must reuse it
    (the kernel sends INIT once per connection)."""

    minor: int
    passthrough: bool

    def to_json(self) -> dict[str, object]:
        return {"minor": self.minor, "passthrough": self.passthrough}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> InitParams:
        return cls(int(d["minor"]), bool(d["passthrough"]))  # type: ignore[call-overload]


def clone_fd(primary: int) -> int:
    """A new /dev/fuse fd with its own processing queue on *primary*'s connection, non-blocking."""
    c = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        fcntl.ioctl(c, p.DEV_IOC_CLONE, struct.pack("<I", primary))
    except OSError:
        os.close(c)
        raise
    return c


def is_fuse_device(fd: int) -> bool:
    st = os.fstat(fd)
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 10 and os.minor(st.st_rdev) == 229


# Requests that may wait for the network (or hash a whole file) run on the data threads;
# everything else is answered by the thread that read it, from memory.
DATA_OPS = frozenset({p.READ, p.OPEN})


class Listing:
    """A directory's entries ("." and ".." first) between the READDIR calls that continue it:
    names in one buffer and inode numbers in an array, ~20 bytes an entry instead of ~300 as
    tuples of attributes (a listed 250,000-entry directory held 90 MB per layer)."""

    __slots__ = ("_ends", "_inos", "_names")

    def __init__(self, ino: int, pairs: Iterable[tuple[bytes, int]]) -> None:
        names = bytearray(b"...")
        ends, inos = array("Q", (1, 3)), array("Q", (ino, ino))
        for name, child in pairs:
            names += name
            ends.append(len(names))
            inos.append(child)
        self._names, self._ends, self._inos = bytes(names), ends, inos

    def __len__(self) -> int:
        return len(self._inos)

    def __getitem__(self, i: int) -> tuple[bytes, int]:
        start = self._ends[i - 1] if i else 0
        return self._names[start : self._ends[i]], self._inos[i]


class FuseSession:
    """One mounted FUSE connection serving one read-only filesystem.

    The primary fd (from mount) is never read after mount: a copy of it is held elsewhere
    (the daemon or systemd's fd store) to keep the connection alive across a server
    restart, and a request read on an fd that stays open would hang forever if this
    process died. Requests are read on a clone, whose in-flight requests the kernel
    aborts (EIO/ECONNABORTED, never a hang) when this process goes away.

    A subclass may serve a tree that changes (the additional layer store): it sets the
    class attributes below and adds handlers.
    """

    read_only = True  # mounted MS_RDONLY: the kernel answers writes with EROFS itself
    entry_timeout = TIMEOUT  # seconds the kernel may cache entries and attributes

    def __init__(
        self,
        fs: ReadOnlyFS,
        mountpoint: str,
        *,
        on_op: Callable[[str, float], None] | None = None,
        passthrough: bool = False,
    ) -> None:
        self.fs = fs
        self.mountpoint = mountpoint
        self.on_op = on_op  # (operation name, seconds) for metrics
        self.fd = -1  # primary
        self.root: MountRef | None = None  # the mount instance made by mount(), for whoever unmounts it
        self.clone = -1  # the fd requests are read from
        self.proto_minor = 0
        self.dead = False
        # Passthrough: the kernel reads fully cached files from their cache file itself. It
        # needs OPEN answered for every file, so it trades small-file open rates for native
        # read speed; opt-in. Active only if the kernel offers it at INIT.
        self.want_passthrough = passthrough
        self.passthrough_active = False
        self._backing: dict[int, int] = {}  # ino -> backing id (kept for the mount's lifetime)
        self._listings: dict[int, Listing] = {}  # dirs being listed (read-only tree)
        self._lock = threading.Lock()

    @property
    def passthrough_files(self) -> int:
        return len(self._backing)

    @property
    def init_params(self) -> InitParams:
        return InitParams(self.proto_minor, self.passthrough_active)

    # -- lifecycle ----------------------------------------------------------------------
    def mount(self) -> None:
        """mount(2), then answer INIT on a clone; the session is usable when this returns."""
        self.fd = mount_fuse(self.mountpoint, read_only=self.read_only)
        try:
            self.root = MountRef.open(self.mountpoint)  # before INIT: an O_PATH open asks the server nothing
            self.clone = clone_fd(self.fd)
            deadline = _clock() + 10
            poller = select.poll()  # not select(): fds above 1023 with hundreds of layers
            poller.register(self.clone, select.POLLIN)
            while True:
                if poller.poll(1000):
                    try:
                        buf = os.read(self.clone, BUFSIZE)
                    except BlockingIOError:
                        continue
                    opcode = p.IN_HEADER.unpack_from(buf)[1]
                    self.dispatch(self.clone, buf)
                    if opcode == p.INIT:
                        break
                if _clock() > deadline:
                    raise OSError(errno.ETIMEDOUT, f"no FUSE INIT from the kernel for {self.mountpoint}")
        except BaseException:
            self.close()
            if self.root is not None:
                self.root.unmount()  # ours only: never a mount made at the path since
                self.root.close()
                self.root = None
            else:
                unmount(self.mountpoint)  # mount(2) just put it there and nothing followed
            raise

    def attach(self, primary: int, init: InitParams) -> None:
        """Serve an already mounted connection handed over from an earlier server."""
        if not is_fuse_device(primary):
            raise OSError(errno.EBADF, "not a /dev/fuse file descriptor")
        self.fd = primary
        self.proto_minor = init.minor
        self.passthrough_active = init.passthrough
        self.clone = clone_fd(primary)

    def close(self) -> None:
        for fd in (self.clone, self.fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.clone = self.fd = -1

    # -- replies --------------------------------------------------------------------------
    @staticmethod
    def _reply(fd: int, unique: int, data: bytes = b"", error: int = 0) -> None:
        try:
            os.write(
                fd,
                p.OUT_HEADER.pack(p.OUT_HEADER.size + (0 if error else len(data)), -error, unique)
                + (b"" if error else data),
            )
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the request was interrupted meanwhile
                log.debug("FUSE reply failed: %s", e)

    @staticmethod
    def _attr(a: Attr) -> bytes:
        sec, nsec = divmod(a.mtime_ns, 1_000_000_000)
        return p.ATTR.pack(
            a.ino, a.size, a.blocks, sec, sec, sec, nsec, nsec, nsec, a.mode, a.nlink, a.uid, a.gid, a.rdev, 4096, 0
        )

    def _entry(self, a: Attr) -> bytes:
        return p.ENTRY_OUT.pack(a.ino, 0, self.entry_timeout, self.entry_timeout, 0, 0) + self._attr(a)

    # -- dispatch -----------------------------------------------------------------------------
    def dispatch(self, fd: int, buf: bytes | memoryview) -> None:
        _len, opcode, unique, nodeid, _uid, _gid, _pid, _ext, _pad = p.IN_HEADER.unpack_from(buf)
        body = memoryview(buf)[p.IN_HEADER.size :]
        handler = self._handlers.get(opcode)
        if handler is None:
            if opcode in (p.FORGET, p.BATCH_FORGET, p.INTERRUPT):
                return  # no reply expected; inodes live as long as the layer
            self._reply(fd, unique, error=errno.EROFS if opcode in _WRITE_OPS else errno.ENOSYS)
            return
        t0 = _clock()
        try:
            data = handler(self, nodeid, body)
        except OSError as e:
            self._reply(fd, unique, error=e.errno or errno.EIO)
        except Exception:
            log.exception("FUSE op %d failed", opcode)
            self._reply(fd, unique, error=errno.EIO)
        else:
            if data is not None:
                self._reply(fd, unique, data)
        if self.on_op is not None:
            self.on_op(_OP_NAMES.get(opcode, str(opcode)), _clock() - t0)

    def _init(self, nodeid: int, body: memoryview) -> bytes:
        major, minor, _ra, flags = p.INIT_IN.unpack_from(body)
        flags2 = struct.unpack_from("<I", body, 16)[0] if minor >= 36 and len(body) >= 20 else 0
        if major != 7:
            raise OSError(errno.EPROTO, f"unsupported FUSE protocol {major}.{minor}")
        self.proto_minor = minor
        kernel = flags | (flags2 << 32)
        want = (
            p.ASYNC_READ
            | p.PARALLEL_DIROPS
            | p.DO_READDIRPLUS
            | p.READDIRPLUS_AUTO
            | p.MAX_PAGES
            | p.CACHE_SYMLINKS
            | p.NO_OPENDIR_SUPPORT
            | p.INIT_EXT
        )
        if self.want_passthrough and kernel & p.PASSTHROUGH:
            want |= p.PASSTHROUGH
        else:
            want |= p.NO_OPEN_SUPPORT
        got = kernel & want
        self.passthrough_active = bool(got & p.PASSTHROUGH)
        stack_depth = 1 if self.passthrough_active else 0  # overlayfs may still stack on top
        out = p.INIT_OUT.pack(
            7,
            min(minor, 45),
            MAX_READ,
            got & 0xFFFFFFFF,
            16,
            12,
            MAX_READ,
            1,
            MAX_READ // 4096,
            0,
            got >> 32,
            stack_depth,
        )
        return out if minor >= 23 else out[:24]

    def _lookup(self, nodeid: int, body: memoryview) -> bytes:
        name = bytes(body).split(b"\0", 1)[0]
        return self._entry(self.fs.lookup(nodeid, name))

    def _getattr(self, nodeid: int, body: memoryview) -> bytes:
        return p.ATTR_OUT.pack(self.entry_timeout, 0, 0) + self._attr(self.fs.getattr(nodeid))

    def _readlink(self, nodeid: int, body: memoryview) -> bytes:
        return self.fs.readlink(nodeid)

    def _open(self, nodeid: int, body: memoryview) -> bytes:
        if not self.passthrough_active:
            # Declining OPEN (ENOSYS) tells the kernel to stop sending OPEN/RELEASE and keep caches.
            raise OSError(errno.ENOSYS, "open not needed")
        backing = self._backing.get(nodeid, 0)
        if not backing:
            fd = self.fs.passthrough_fd(nodeid)
            if fd is not None:
                backing = self._register_backing(nodeid, fd)
        if backing:
            return p.OPEN_OUT.pack(0, p.FOPEN_PASSTHROUGH, backing)
        return p.OPEN_OUT.pack(0, p.FOPEN_KEEP_CACHE, 0)

    def _register_backing(self, ino: int, fd: int) -> int:
        """Hand the kernel the (verified, open) cache file holding *ino*'s content; closes *fd*.
        Returns the backing id, 0 on failure (the file is then served by us)."""
        try:
            arg = bytearray(p.BACKING_MAP.pack(fd, 0, 0))
            backing = fcntl.ioctl(self.clone, p.DEV_IOC_BACKING_OPEN, arg)
        except OSError as e:
            log.debug("passthrough for inode %d refused by the kernel: %s", ino, e)
            return 0
        finally:
            os.close(fd)  # the kernel holds its own reference
        with self._lock:
            if ino in self._backing:  # another thread won the race; drop ours
                try:
                    fcntl.ioctl(self.clone, p.DEV_IOC_BACKING_CLOSE, struct.pack("<I", backing))
                except OSError:
                    pass
                return self._backing[ino]
            self._backing[ino] = int(backing)
        return int(backing)

    def _read(self, nodeid: int, body: memoryview) -> bytes:
        _fh, offset, size, _flags = p.READ_IN.unpack_from(body)
        return self.fs.read(nodeid, offset, min(size, MAX_READ))

    def _statfs(self, nodeid: int, body: memoryview) -> bytes:
        total, files = self.fs.statfs()
        return p.KSTATFS.pack((total + 4095) // 4096, 0, 0, files, 0, 4096, 255, 4096, 0)

    def _getxattr(self, nodeid: int, body: memoryview) -> bytes:
        size, _ = p.GETXATTR_IN.unpack_from(body)
        name = bytes(body[p.GETXATTR_IN.size :]).split(b"\0", 1)[0]
        value = self.fs.getxattr(nodeid, name)
        if size == 0:
            return p.GETXATTR_OUT.pack(len(value), 0)
        if len(value) > size:
            raise OSError(errno.ERANGE, "buffer too small")
        return value

    def _listxattr(self, nodeid: int, body: memoryview) -> bytes:
        size, _ = p.GETXATTR_IN.unpack_from(body)
        data = b"".join(n + b"\0" for n in self.fs.listxattr(nodeid))
        if size == 0:
            return p.GETXATTR_OUT.pack(len(data), 0)
        if len(data) > size:
            raise OSError(errno.ERANGE, "buffer too small")
        return data

    def _opendir(self, nodeid: int, body: memoryview) -> bytes:
        raise OSError(errno.ENOSYS, "opendir not needed")

    def _readdir(self, nodeid: int, body: memoryview, plus: bool = False) -> bytes:
        _fh, offset, size, _flags = p.READ_IN.unpack_from(body)
        # One listing per directory, reused for the calls that continue it (offset > 0): rebuilding
        # it per call made listing a 500k-entry directory quadratic (minutes of CPU). It holds
        # names and inode numbers only (a few bytes each; attributes are read as entries go out).
        entries = self._listings.get(nodeid) if offset else None
        if entries is None:
            dirents = getattr(self.fs, "dirents", None)
            pairs = dirents(nodeid) if dirents is not None else ((n, a.ino) for n, a in self.fs.readdir(nodeid))
            entries = Listing(nodeid, pairs)
            with self._lock:
                while len(self._listings) >= 16:
                    self._listings.pop(next(iter(self._listings)))
                self._listings[nodeid] = entries
        out = bytearray()
        for i in range(offset, len(entries)):
            name, ino = entries[i]
            a = self.fs.getattr(ino)
            dirent = p.DIRENT.pack(a.ino, i + 1, len(name), DT.get(stat.S_IFMT(a.mode), 0)) + name
            dirent += b"\0" * (-len(dirent) % 8)
            if plus:
                # "." and ".." must not create lookups: a zero nodeid entry.
                ent = self._entry(a) if i >= 2 else bytes(p.ENTRY_OUT.size + p.ATTR.size)
                dirent = ent + dirent
            if len(out) + len(dirent) > size:
                break
            out += dirent
        return bytes(out)

    def _readdirplus(self, nodeid: int, body: memoryview) -> bytes:
        return self._readdir(nodeid, body, plus=True)

    def _access(self, nodeid: int, body: memoryview) -> bytes:
        self.fs.getattr(nodeid)
        return b""

    def _release(self, nodeid: int, body: memoryview) -> bytes:
        return b""

    def _flush(self, nodeid: int, body: memoryview) -> bytes:
        # ENOSYS: the kernel stops sending FLUSH on every close (nothing to flush here).
        raise OSError(errno.ENOSYS, "flush not needed")

    def _ioctl(self, nodeid: int, body: memoryview) -> bytes:
        # isatty() probes (TCGETS) arrive here for every file some runtimes open: answer at once.
        raise OSError(errno.ENOTTY, "not a terminal")

    def _destroy(self, nodeid: int, body: memoryview) -> bytes:
        self.dead = True
        return b""

    _handlers: dict[int, Callable[[FuseSession, int, memoryview], bytes | None]] = {
        p.INIT: _init,
        p.LOOKUP: _lookup,
        p.GETATTR: _getattr,
        p.READLINK: _readlink,
        p.OPEN: _open,
        p.READ: _read,
        p.STATFS: _statfs,
        p.GETXATTR: _getxattr,
        p.LISTXATTR: _listxattr,
        p.OPENDIR: _opendir,
        p.READDIR: _readdir,
        p.READDIRPLUS: _readdirplus,
        p.ACCESS: _access,
        p.RELEASE: _release,
        p.RELEASEDIR: _release,
        p.FLUSH: _flush,
        p.IOCTL: _ioctl,
        p.DESTROY: _destroy,
    }


_WRITE_OPS = frozenset({p.SETATTR, p.WRITE, 6, 8, 9, 10, 11, 12, 13, 21, 24, 35, 43, 45})
_OP_NAMES = {
    p.LOOKUP: "lookup",
    p.GETATTR: "getattr",
    p.READLINK: "readlink",
    p.OPEN: "open",
    p.READ: "read",
    p.STATFS: "statfs",
    p.GETXATTR: "getxattr",
    p.LISTXATTR: "listxattr",
    p.OPENDIR: "opendir",
    p.READDIR: "readdir",
    p.READDIRPLUS: "readdirplus",
    p.ACCESS: "access",
    p.INIT: "init",
    p.RELEASE: "release",
    p.RELEASEDIR: "releasedir",
    p.DESTROY: "destroy",
    p.FLUSH: "flush",
}


def _clock() -> float:
    import time

    return time.perf_counter()


def is_mounted(path: str | os.PathLike[str]) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if line.split()[4].replace("\\040", " ") == target:
                return True
    return False
