"""The life of each lazily mounted layer on the node: one owner per mount, by construction.

Every layer digest has one entry and one lock. Its state moves

    absent -> mounting -> serving -> releasing -> absent      (and mounting -> failed)

and every move happens under that lock. A layer is *wanted* while a lease is held on it
(a Prepare that mounts it, an image's layers mounted ahead, a check before a container
starts) or a snapshot uses it (asked of the snapshot store, the one record that survives
a restart). Only an entry that nobody wants is released, and the release unmounts the
mount instance the entry holds (the ``Mounter`` knows it by its connection, not its
path); a lease that comes while it is released waits, and the layer is mounted afresh
after. So a removal racing a pull can neither unmount the pull's new mount nor remove the
directory it is being mounted on, and a Prepare never reports a layer that is being torn
down. Health repairs (a dead or wedged connection), restores after a daemon restart and
mounts ahead all go through the same moves.

The mount and unmount themselves (seconds: a TOC fetch, an index build to wait for) run
outside the lock; the state says who owns the entry meanwhile. How they run is injected,
so a test can hold each one and run them in any order.
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from lazypull.errors import LazypullError

log = logging.getLogger(__name__)

M = TypeVar("M")
Task = Callable[[], None]
Spawn = Callable[[Task], None]


class LayerMountError(LazypullError):
    pass


class State(enum.Enum):
    ABSENT = "absent"
    MOUNTING = "mounting"
    SERVING = "serving"
    RELEASING = "releasing"
    FAILED = "failed"


class Mounter(Protocol[M]):
    """What mounts layers for the lifecycle (the layer server, or a model of it in tests)."""

    def mount(self, digest: str, mountpoint: Path, spec: dict[str, Any]) -> M: ...

    def unmount(self, digest: str, mountpoint: Path, mounted: M, free_cache: bool) -> None:
        """Unmount exactly *mounted*; a newer mount at the same path is left alone."""

    def live(self, mounted: M) -> bool:
        """Whether *mounted* is what its path shows and its connection serves."""

    def clear(self, mountpoint: Path) -> None:
        """Remove the layer's directory (nothing is mounted there any more)."""


@dataclass
class Entry(Generic[M]):
    digest: str
    mountpoint: Path
    spec: dict[str, Any]
    state: State = State.ABSENT
    mounted: M | None = None
    error: str = ""
    attempt: int = 0  # mounts started so far; a lease fails only on its own attempt's failure
    claimed: bool = False  # this attempt's mount call has begun (a queued mount-ahead then does nothing)
    leases: dict[int, float] = field(default_factory=dict)  # lease id -> expiry (monotonic; inf: none)
    retired: bool = False  # absent and forgotten: a new lease makes a new entry
    cond: threading.Condition = field(default_factory=threading.Condition, repr=False)


class Lease(Generic[M]):
    """A hold on one layer: it stays mounted (or gets mounted) while any lease is held."""

    def __init__(self, lc: Lifecycle[M], entry: Entry[M], lid: int, attempt: int) -> None:
        self._lc, self.entry, self.id, self.attempt = lc, entry, lid, attempt

    @property
    def digest(self) -> str:
        return self.entry.digest

    @property
    def mountpoint(self) -> Path:
        return self.entry.mountpoint

    def wait(self, timeout: float) -> M:
        """The serving mount; a mount that fails (this lease's attempt) or is late raises."""
        return self._lc.wait_serving(self.entry, self.attempt, timeout, live=False)

    def wait_live(self, timeout: float) -> M:
        """The serving mount, checked to be what the path shows right now: a stale or dead
        one is repaired (unmounted, mounted again) within *timeout*, or this raises."""
        return self._lc.wait_serving(self.entry, self.attempt, timeout, live=True)

    def release(self) -> None:
        self._lc.drop(self.entry, self.id)

    def __enter__(self) -> Lease[M]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _inline(task: Task) -> None:
    task()


def _thread(task: Task) -> None:
    threading.Thread(target=task, daemon=True, name="layer-mount").start()


class Lifecycle(Generic[M]):
    def __init__(
        self,
        mounter: Mounter[M],
        in_use: Callable[[str], bool],
        *,
        spawn: Spawn = _thread,
        spawn_ahead: Spawn | None = None,
        spawn_release: Spawn = _inline,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mounter = mounter
        self.in_use = in_use  # does a snapshot use this digest (the store's answer)
        self._spawn = spawn
        self._spawn_ahead = spawn_ahead or spawn
        self._spawn_release = spawn_release
        self._clock = clock
        self._entries: dict[str, Entry[M]] = {}
        self._lock = threading.Lock()  # the table only; each entry has its own
        self._ids = itertools.count(1)
        self.repairs = 0  # instances found dead or stale and mounted again
        self.failures = 0  # mounts that failed

    # -- reading --------------------------------------------------------------------------
    def entries(self) -> list[Entry[M]]:
        with self._lock:
            return list(self._entries.values())

    def get(self, digest: str) -> Entry[M] | None:
        with self._lock:
            return self._entries.get(digest)

    def active(self, digest: str) -> bool:
        """Being mounted, or serving: a lease now would start nothing."""
        e = self.get(digest)
        return e is not None and e.state in (State.MOUNTING, State.SERVING)

    # -- leases ---------------------------------------------------------------------------
    def lease(
        self,
        digest: str,
        mountpoint: Path,
        spec: dict[str, Any] | Callable[[], dict[str, Any] | None],
        *,
        ahead: bool = False,
        ttl: float | None = None,
    ) -> Lease[M]:
        """Hold *digest* mounted, mounting it if needed. *ahead*: mounted before anyone asks
        (in the ahead queue, behind whatever is asked for); *ttl*: the lease ends by itself
        (a pull that never comes back for the layer leaves nothing mounted)."""
        while True:
            e = self._entry(digest, mountpoint)
            with e.cond:
                if not e.retired:
                    return self._lease(e, spec, ahead, ttl)

    def _lease(
        self,
        e: Entry[M],
        spec: dict[str, Any] | Callable[[], dict[str, Any] | None],
        ahead: bool,
        ttl: float | None,
    ) -> Lease[M]:
        """Under e.cond."""
        if not callable(spec):
            e.spec = spec  # the newest credentials, for later re-mounts
        elif not e.spec:
            e.spec = spec() or {}
        lid = next(self._ids)
        e.leases[lid] = self._clock() + ttl if ttl is not None else float("inf")
        if e.state in (State.ABSENT, State.FAILED):
            self._start_mount(e, ahead)
        elif e.state == State.MOUNTING and not ahead and not e.claimed:
            self._spawn(self._mount_task(e, e.attempt))  # asked for: do not wait in the ahead queue
        attempt = e.attempt + 1 if e.state == State.RELEASING else e.attempt
        return Lease(self, e, lid, attempt)

    def drop(self, e: Entry[M], lid: int) -> None:
        with e.cond:
            e.leases.pop(lid, None)
        self.settle(e.digest)

    def wait_serving(self, e: Entry[M], attempt: int, timeout: float, *, live: bool) -> M:
        end = self._clock() + timeout
        while True:
            with e.cond:
                while True:
                    if e.state == State.SERVING and e.mounted is not None:
                        m = e.mounted
                        break
                    if e.state == State.FAILED and e.attempt >= attempt:
                        raise LayerMountError(f"mounting layer failed: {e.error}")
                    left = end - self._clock()
                    if left <= 0:
                        raise LayerMountError(f"layer mount at {e.mountpoint} not ready after {timeout:g}s")
                    e.cond.wait(min(left, 1.0))
            if not live or self.mounter.live(m):
                return m
            self.repair(e.digest, m, "its mount is not what the path shows, or its connection is dead")
            with e.cond:
                # mypy keeps e.state narrowed to SERVING from above, but another thread changes it
                attempt = max(attempt, e.attempt + (1 if e.state == State.RELEASING else 0))  # type: ignore[comparison-overlap]
            if self._clock() >= end:
                raise LayerMountError(f"layer at {e.mountpoint} is not served and was not mounted again in time")

    # -- moves ------------------------------------------------------------------------------
    def _entry(self, digest: str, mountpoint: Path) -> Entry[M]:
        with self._lock:
            e = self._entries.get(digest)
            if e is None or e.retired:
                e = self._entries[digest] = Entry(digest, mountpoint, {})
            return e

    def _wanted(self, e: Entry[M]) -> bool:
        """Leases left (expired ones dropped), or a snapshot that uses the layer. Under e.cond."""
        now = self._clock()
        for lid in [k for k, until in e.leases.items() if until <= now]:
            del e.leases[lid]
        return bool(e.leases) or self.in_use(e.digest)

    def _start_mount(self, e: Entry[M], ahead: bool) -> None:
        """absent/failed -> mounting. Under e.cond."""
        e.attempt += 1
        e.state, e.error, e.claimed = State.MOUNTING, "", False
        (self._spawn_ahead if ahead else self._spawn)(self._mount_task(e, e.attempt))

    def _mount_task(self, e: Entry[M], attempt: int) -> Task:
        def run() -> None:
            with e.cond:
                if e.attempt != attempt or e.claimed or e.state != State.MOUNTING:
                    return  # started by a lease that did not wait for the ahead queue
                e.claimed = True
                spec = e.spec
            mounted: M | None = None
            error = ""
            try:
                mounted = self.mounter.mount(e.digest, e.mountpoint, spec)
            except Exception as x:
                error = str(x) or type(x).__name__
            with e.cond:
                stale = e.attempt != attempt or e.state != State.MOUNTING  # never: one mount at a time
                if stale:
                    log.error("layer %s: a mount ended that the layer no longer expects", e.digest[7:19])
                elif mounted is None:
                    e.state, e.error = State.FAILED, error
                    self.failures += 1
                    log.info("mount of layer %s failed: %s", e.digest[7:19], error)
                else:
                    e.state, e.mounted = State.SERVING, mounted
                e.cond.notify_all()
            if stale and mounted is not None:
                self.mounter.unmount(e.digest, e.mountpoint, mounted, False)
            self.settle(e.digest)  # nobody waits any more (a Prepare gave up): released at once

        return run

    def settle(self, digest: str) -> None:
        """Release the layer if nobody wants it (after a lease ends or a snapshot goes)."""
        e = self.get(digest)
        if e is None:
            return
        with e.cond:
            if e.state in (State.MOUNTING, State.RELEASING) or self._wanted(e):
                return  # mounting: settled when it ends; releasing: in hand
            mounted, e.mounted = e.mounted, None
            e.state = State.RELEASING
        self._spawn_release(self._release_task(e, mounted, final=True))

    def repair(self, digest: str, mounted: M, why: str) -> bool:
        """*mounted* does not serve: unmount it and, if the layer is still wanted, mount it
        again. Only the instance named is touched (a newer one is already being handled)."""
        e = self.get(digest)
        if e is None:
            return False
        with e.cond:
            if e.state != State.SERVING or e.mounted is not mounted:
                return False
            e.state, e.mounted = State.RELEASING, None
            self.repairs += 1
        log.warning("layer %s at %s is not serving (%s): mounting it again", digest[7:19], e.mountpoint, why)
        self._spawn_release(self._release_task(e, mounted, final=False))
        return True

    def _release_task(self, e: Entry[M], mounted: M | None, *, final: bool) -> Task:
        def run() -> None:
            if mounted is not None:
                try:
                    self.mounter.unmount(e.digest, e.mountpoint, mounted, final)
                except Exception as x:
                    log.error("unmounting layer %s at %s failed: %s", e.digest[7:19], e.mountpoint, x)
            with e.cond:
                again = self._wanted(e)
            if not again:
                try:
                    self.mounter.clear(e.mountpoint)
                except OSError as x:
                    log.warning("cannot remove %s: %s", e.mountpoint, x)
            with e.cond:
                e.state = State.ABSENT
                if self._wanted(e):
                    self._start_mount(e, ahead=False)
                e.cond.notify_all()
            self._forget_if_absent(e)

        return run

    def _forget_if_absent(self, e: Entry[M]) -> None:
        with e.cond:
            if e.state != State.ABSENT or e.leases:
                return
            e.retired = True  # under its lock: no lease can join it from now on
        with self._lock:
            if self._entries.get(e.digest) is e:
                del self._entries[e.digest]

    # -- after a restart, and housekeeping ----------------------------------------------------
    def adopt(self, digest: str, mountpoint: Path, spec: dict[str, Any], mounted: M) -> bool:
        """A mount that outlived the daemon (the layer server kept it): serving again, and
        released at once if no snapshot uses it (an interrupted pull's layer)."""
        e = self._entry(digest, mountpoint)
        with e.cond:
            if e.state != State.ABSENT or e.retired:
                return False
            e.spec, e.state, e.mounted = spec, State.SERVING, mounted
            e.cond.notify_all()
        self.settle(digest)
        return True

    def tidy(self, digest: str, mountpoint: Path) -> None:
        """A layer directory found on disk (left by a crash): removed, through the same moves
        as any release, unless the layer is wanted."""
        while True:
            e = self._entry(digest, mountpoint)
            with e.cond:
                if not e.retired:
                    break
        self.settle(digest)

    def sweep(self, *, end_timed: bool = False) -> None:
        """End expired leases (mounts ahead that no Prepare came for) and release what they held.
        *end_timed*: every lease with a time limit ends now (containerd's garbage collection:
        what no image holds goes; a pull still running mounts its layer again at its Prepare)."""
        for e in self.entries():
            if end_timed:
                with e.cond:
                    for lid in [k for k, until in e.leases.items() if until != float("inf")]:
                        del e.leases[lid]
            self.settle(e.digest)

    def serving(self) -> Iterator[tuple[Entry[M], M]]:
        for e in self.entries():
            with e.cond:
                m = e.mounted if e.state == State.SERVING else None
            if m is not None:
                yield e, m
