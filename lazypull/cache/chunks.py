"""Content-addressed cache of verified chunks: disk (bounded, LRU) with memory in front.

Keys are chunk digests, so identical chunks across layers and images are stored
once. Files are written to a temp name and renamed, so a crash never leaves a partial
entry under a real name; entries are re-verified when loaded from disk, so a
corrupted file is dropped and refetched instead of served.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import queue
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from lazypull.errors import LazypullError
from lazypull.fsutil import atomic_write
from lazypull.oci import digest as digestlib

log = logging.getLogger(__name__)


class MemoryLRU:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._d: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    def get(self, key: str) -> bytes | None:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def drop(self, key: str) -> None:
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self._size -= len(old)

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._d[key] = value
            self._size += len(value)
            while self._size > self.max_bytes and self._d:
                _, v = self._d.popitem(last=False)
                self._size -= len(v)


class ChunkCache:
    def __init__(
        self,
        root: Path,
        max_bytes: int = 10 << 30,
        memory_bytes: int = 64 << 20,
        write_queue: int = 16,
        memory: MemoryLRU | None = None,
        accounting: bool = True,
    ) -> None:
        """*memory*: a memory tier shared with other caches (the layer server keeps one per
        process, so the node has one memory budget); otherwise one of *memory_bytes*.

        *accounting* False: another process (the layer server) owns this directory's disk
        bound. This instance then neither scans nor evicts; what it writes is handed to the
        owner with :meth:`adopt`, so the node keeps one bound and one eviction order."""
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.memory = memory if memory is not None else MemoryLRU(memory_bytes)
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # LRU order of disk entries
        self._total = 0
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        self._real_root = os.path.realpath(self.root) + os.sep
        self._confined: set[str] = set()  # subdirectories checked to resolve inside root
        self.accounting = accounting
        if accounting:
            self._scan()
        self._pending: set[str] = set()
        self._queue: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=write_queue)
        threading.Thread(target=self._writer, daemon=True, name="cache-writer").start()

    def _path(self, digest: str) -> Path:
        """``root/hex[:2]/hex`` for a validated sha256 digest, and never anything outside root.

        Digests come from TOCs (untrusted) and are validated when the TOC is parsed; this
        checks again, so no caller can turn a crafted string into a path elsewhere."""
        hexd = digestlib.validate(digest, ("sha256",)).partition(":")[2]
        sub = self.root / hexd[:2]
        if hexd[:2] not in self._confined:  # resolved once per subdirectory (hot path)
            if os.path.realpath(sub) != self._real_root + hexd[:2]:
                raise LazypullError(f"cache path for {digest} leaves the cache directory {self.root}")
            if sub.is_dir():
                self._confined.add(hexd[:2])
        return sub / hexd

    def _scan(self) -> None:
        """Rebuild the index after a restart, oldest access first."""
        found = []
        for sub in self.root.iterdir() if self.root.exists() else []:
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                if f.name.startswith(".tmp-"):
                    f.unlink(missing_ok=True)  # leftovers of an interrupted write
                    continue
                key = f"sha256:{f.name}"
                if sub.name != f.name[:2] or not digestlib.is_valid(key, ("sha256",)) or not f.is_file():
                    continue  # not ours: never indexed, so never evicted or served
                st = f.stat()
                found.append((st.st_atime, key, st.st_size))
        for _, key, size in sorted(found):
            self._sizes[key] = size
            self._total += size

    def get(self, digest: str) -> bytes | None:
        v = self.memory.get(digest)
        if v is not None:
            self.hits += 1
            return v
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            log.warning("cache entry %s is corrupted; dropping it", digest)
            self.corrupt += 1
            self._drop(digest)
            self.misses += 1
            return None
        self.hits += 1
        with self._lock:
            if digest in self._sizes:
                self._sizes.move_to_end(digest)
        self.memory.put(digest, data)
        return data

    def contains(self, digest: str) -> bool:
        return self.memory.get(digest) is not None or digest in self._pending or self._path(digest).exists()

    def put(self, digest: str, data: bytes) -> None:
        """Store verified bytes (callers verify before calling).

        Readers get them from memory at once; the disk copy is written by a background
        thread, so a cold read never waits for the disk (writes were 2/3 of its time).
        If the writer falls behind, a chunk is simply not persisted (refetched if needed)."""
        self.memory.put(digest, data)
        with self._lock:
            if digest in self._pending or digest in self._sizes:
                return
            self._pending.add(digest)
        try:
            self._queue.put_nowait((digest, data))
        except queue.Full:
            with self._lock:
                self._pending.discard(digest)
            log.debug("cache writer busy; not persisting chunk %s", digest)

    def persist(self, digest: str, data: bytes) -> None:
        """Like :meth:`put`, but wait for room in the writer's queue instead of dropping the
        chunk: for a whole-file fetch, whose point is that later reads are local."""
        self.memory.put(digest, data)
        with self._lock:
            if digest in self._pending or digest in self._sizes:
                return
            self._pending.add(digest)
        self._queue.put((digest, data))

    def flush(self) -> None:
        """Wait until every queued chunk is on disk."""
        self._queue.join()

    def _writer(self) -> None:
        while True:
            digest, data = self._queue.get()
            try:
                self._write(digest, data)
            finally:
                with self._lock:
                    self._pending.discard(digest)
                self._queue.task_done()

    def _write(self, digest: str, data: bytes) -> None:
        path = self._path(digest)
        if path.exists():
            return
        try:
            self._mkdir(path.parent)
            atomic_write(path, data)
        except OSError as e:
            # A full disk must not fail reads: the bytes are still served from memory.
            log.warning("cannot write chunk %s to the cache: %s", digest, e.strerror)
            return
        self._account(digest, len(data))

    def _mkdir(self, sub: Path) -> None:
        """Make a chunk's subdirectory, and the cache directory again if it went (removed under
        a running server: by hand, a cleaner). What it held went with it: forgotten."""
        try:
            sub.mkdir(exist_ok=True, mode=0o700)
            return
        except FileNotFoundError:
            pass
        log.warning("the cache directory %s went away; making it again", self.root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock:
            self._sizes.clear()
            self._total = 0
            self._confined.clear()
        if os.path.realpath(self.root) + os.sep != self._real_root:  # e.g. a symlink put there
            raise OSError(errno.EXDEV, f"the cache directory {self.root} came back elsewhere")
        os.chmod(self.root, 0o700)
        sub.mkdir(exist_ok=True, mode=0o700)

    def path_of(self, digest: str) -> Path | None:
        """The file holding *digest*'s content, if cached."""
        path = self._path(digest)
        return path if path.exists() else None

    def open_verified(self, digest: str) -> int | None:
        """An fd on the cache file of *digest*, its whole content checked through that very fd
        (for FUSE passthrough, where the kernel then reads the file without us). A file that
        does not match is dropped (and counted); None then, or when there is no such file."""
        try:
            fd = os.open(self._path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            h = hashlib.sha256()
            while block := os.read(fd, 1 << 20):
                h.update(block)
            if "sha256:" + h.hexdigest() == digest:
                os.lseek(fd, 0, os.SEEK_SET)
                return fd
        except OSError as e:
            log.warning("cannot read cache entry %s: %s", digest, e)
        os.close(fd)
        log.warning("cache entry %s is corrupted; dropping it", digest)
        self.corrupt += 1
        self.memory.drop(digest)
        self._drop(digest)
        return None

    def put_parts(self, digest: str, parts: Iterable[bytes]) -> Path | None:
        """Store content given as verified parts (a whole file from its chunks), streaming.

        The concatenation is checked against *digest* before it becomes visible."""
        path = self._path(digest)
        if path.exists():
            return path
        try:
            self._mkdir(path.parent)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        except OSError as e:  # a full disk: the file is served by the FUSE server instead
            log.warning("cannot store %s in the cache: %s", digest, e.strerror)
            return None
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for part in parts:
                    h.update(part)
                    f.write(part)
                    size += len(part)
            if "sha256:" + h.hexdigest() != digest:
                raise ValueError(f"assembled content does not match {digest}")
            os.replace(tmp, path)
        except (OSError, ValueError) as e:
            Path(tmp).unlink(missing_ok=True)
            log.warning("cannot store %s in the cache: %s", digest, e)
            return None
        self._account(digest, size)
        return path

    def _account(self, digest: str, size: int) -> None:
        if not self.accounting:
            return  # the owner of the bound learns of it through adopt()
        with self._lock:
            if digest not in self._sizes:
                self._sizes[digest] = size
                self._total += size
            self._evict()

    def adopt(self, digests: Iterable[str]) -> int:
        """Account for chunks another process wrote into this directory (most recent use);
        evicts to stay within the bound. Returns how many were new here."""
        n = 0
        for digest in digests:
            try:
                size = self._path(digest).stat().st_size
            except (FileNotFoundError, LazypullError):
                continue
            with self._lock:
                if digest in self._sizes:
                    self._sizes.move_to_end(digest)
                    continue
                self._sizes[digest] = size
                self._total += size
                n += 1
        with self._lock:
            self._evict()
        return n

    def _evict(self) -> None:
        while self._total > self.max_bytes and self._sizes:
            key, size = self._sizes.popitem(last=False)
            self._total -= size
            self._path(key).unlink(missing_ok=True)

    def remove(self, digest: str) -> bool:
        """Forget a chunk (memory and disk); True if it was on disk."""
        self.memory.drop(digest)
        existed = self._path(digest).exists()
        self._drop(digest)
        return existed

    def _drop(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)
        with self._lock:
            size = self._sizes.pop(digest, None)
            if size is not None:
                self._total -= size

    @property
    def disk_bytes(self) -> int:
        return self._total
