"""The store's FUSE tree: ``ROOT/<base64(ref)>/<digest>/{diff,info,blob}`` made on lookup.

Names appear when containers/storage looks them up (nothing is listed: the store cannot know
which images will be pulled). ``diff`` is a symlink to the layer server's mount of the
layer; ``info`` and ``blob`` are served here. Entries are cached for a second only, so a
released layer is looked up (and mounted) again.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import stat
import threading
from dataclasses import dataclass

from lazypull.fs.fuse import protocol as p
from lazypull.fs.fuse.ops import ROOT_INO, Attr
from lazypull.fs.fuse.server import BUFSIZE, FuseSession
from lazypull.store.info import DIGEST, decode_ref
from lazypull.store.layers import StoreLayer, StoreLayers

log = logging.getLogger(__name__)

MAX_REF = 4096  # bytes of base64 a reference may take (longer names are not references)
# Root's only (containers/storage runs as root; the layers' files are reached through the
# layer server's mounts, not through here): no other user makes the store mount anything.
DIR, FILE, LINK = stat.S_IFDIR | 0o500, stat.S_IFREG | 0o400, stat.S_IFLNK | 0o777


@dataclass(frozen=True)
class Node:
    kind: str  # root, prefix, layer, diff, info, blob
    name: str = ""  # prefix: the base64 so far; others: the reference
    digest: str = ""


class StoreFS:
    """The tree by inode number (the interface :class:`FuseSession` serves)."""

    def __init__(self, layers: StoreLayers) -> None:
        self.layers = layers
        self._nodes: dict[int, Node] = {ROOT_INO: Node("root")}
        self._inos: dict[Node, int] = {Node("root"): ROOT_INO}
        self._attrs: dict[int, Attr] = {}  # as at lookup: asking again must not mount a released layer
        self._lock = threading.Lock()

    def _ino(self, node: Node) -> int:
        with self._lock:
            ino = self._inos.get(node)
            if ino is None:
                ino = self._inos[node] = len(self._nodes) + 1
                self._nodes[ino] = node
            return ino

    def node(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise OSError(errno.ENOENT, "no such inode") from None

    def layer(self, node: Node) -> StoreLayer:
        return self.layers.get(node.name, node.digest)

    def lookup(self, parent: int, name: bytes) -> Attr:
        pnode, text = self.node(parent), os.fsdecode(name)
        if pnode.kind == "root":
            child = Node("prefix", text)
        elif pnode.kind == "prefix":
            ref = decode_ref(pnode.name) if DIGEST.fullmatch(text) else None
            if ref is not None:
                self.layer(Node("layer", ref, text))  # mounts it, or "not here"
                child = Node("layer", ref, text)
            elif len(pnode.name) + len(text) < MAX_REF:
                child = Node("prefix", f"{pnode.name}/{text}")
            else:
                raise OSError(errno.ENOENT, text)
        elif pnode.kind == "layer" and text in ("diff", "info", "blob"):
            layer = self.layer(pnode)
            ino = self._ino(Node(text, pnode.name, pnode.digest))
            if text == "diff":
                attr = Attr(ino, LINK, size=len(os.fsencode(layer.mountpoint)))
            else:
                attr = Attr(ino, FILE, size=len(layer.info) if text == "info" else layer.desc.size)
            self._attrs[ino] = attr
            return attr
        else:
            raise OSError(errno.ENOENT, text)
        return self.getattr(self._ino(child))

    def getattr(self, ino: int) -> Attr:
        node = self.node(ino)
        if node.kind in ("root", "prefix", "layer"):
            return Attr(ino, DIR, nlink=2)
        return self._attrs[ino]

    def readdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        node = self.node(ino)
        if node.kind != "layer":
            return []
        return [(n.encode(), self.lookup(ino, n.encode())) for n in ("diff", "info", "blob")]

    def readlink(self, ino: int) -> bytes:
        node = self.node(ino)
        if node.kind != "diff":
            raise OSError(errno.EINVAL, "not a symlink")
        return os.fsencode(self.layer(node).mountpoint)

    def read(self, ino: int, offset: int, size: int) -> bytes:
        node = self.node(ino)
        layer = self.layer(node)
        if node.kind == "info":
            return layer.info[offset : offset + size]
        if node.kind == "blob":
            end = min(offset + size, layer.desc.size)
            return layer.store.blob_source(layer.desc).read_at(offset, end - offset) if end > offset else b""
        raise OSError(errno.EISDIR, "not a file")

    def listxattr(self, ino: int) -> list[bytes]:
        return []

    def getxattr(self, ino: int, name: bytes) -> bytes:
        raise OSError(errno.ENODATA, "no xattrs")

    def passthrough_fd(self, ino: int) -> int | None:
        return None

    def statfs(self) -> tuple[int, int]:
        return 0, len(self._nodes)


class StoreSession(FuseSession):
    """A writable-looking mount: creating ``use`` counts a user of a layer, ``rmdir`` of it one less."""

    read_only = False  # the kernel must pass CREATE and RMDIR on to us
    entry_timeout = 1
    fs: StoreFS

    def _create(self, nodeid: int, body: memoryview) -> bytes:
        name = bytes(body[16:]).split(b"\0", 1)[0]
        node = self.fs.node(nodeid)
        if node.kind == "layer" and name == b"use":
            self.fs.layers.use(self.fs.layer(node))
            raise OSError(errno.ENOENT, "use")  # the answer a counting store gives
        raise OSError(errno.EROFS, "read-only")

    def _rmdir(self, nodeid: int, body: memoryview) -> bytes:
        name = os.fsdecode(bytes(body).split(b"\0", 1)[0])
        layer = self.fs.layers.find(name) if self.fs.node(nodeid).kind == "prefix" else None
        if layer is None:
            raise OSError(errno.EROFS, "read-only")
        self.fs.layers.release(layer)
        raise OSError(errno.ENOENT, name)  # the answer a counting store gives

    _handlers = {**FuseSession._handlers, p.CREATE: _create, p.RMDIR: _rmdir}  # type: ignore[dict-item]


def serve(session: StoreSession, stop: threading.Event, threads: int = 4) -> None:
    """Answer requests on *threads* threads until *stop* is set or the mount goes away."""

    def loop() -> None:
        poller = select.poll()
        poller.register(session.clone, select.POLLIN)
        while not stop.is_set():
            if not poller.poll(500):
                continue
            try:
                buf = os.read(session.clone, BUFSIZE)
            except BlockingIOError:
                continue
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                stop.set()  # ENODEV: unmounted
                return
            session.dispatch(session.clone, buf)
            if session.dead:
                stop.set()

    workers = [threading.Thread(target=loop, name=f"store-{i}", daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
