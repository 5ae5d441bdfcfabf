"""The layer lifecycle against a model of the kernel's mounts, in every order Hypothesis finds.

Each mount and unmount the lifecycle starts runs in its own thread and waits at a gate
until a rule opens it, so the steps of pulls, removals, health repairs and restarts
interleave as they can on a node. The model kernel records what the lifecycle could get
wrong: a mount stacked on another, an unmount that takes away another mount than the one
named, a directory removed under a mount, a snapshot committed on a layer that does not
serve, a container handed a layer that does not serve.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lazypull.snapshot.lifecycle import LayerMountError, Lease, Lifecycle, State

DIGESTS = ["sha256:a", "sha256:b", "sha256:c"]


@dataclass(eq=False)
class Inst:
    id: int
    path: Path
    alive: bool = True


@dataclass
class Kernel:
    """Mount stacks per path, and every violation seen."""

    stacks: dict[Path, list[Inst]] = field(default_factory=dict)
    dirs: set[Path] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def top(self, path: Path) -> Inst | None:
        s = self.stacks.get(path) or []
        return s[-1] if s else None


class Gates:
    """Tasks of the lifecycle run in threads and wait here until the test lets one go."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.running = 0
        self.waiting: list[threading.Event] = []

    def spawn(self, task: Any) -> None:
        with self.cond:
            self.running += 1

        def run() -> None:
            try:
                task()
            finally:
                with self.cond:
                    self.running -= 1
                    self.cond.notify_all()

        threading.Thread(target=run, daemon=True).start()

    def gate(self) -> None:
        ev = threading.Event()
        with self.cond:
            self.waiting.append(ev)
            self.cond.notify_all()
        ev.wait(30)

    def quiet(self) -> None:
        """Every task is done or waits at its gate."""
        end = time.monotonic() + 10
        with self.cond:
            while self.running > len(self.waiting):
                assert time.monotonic() < end, "a lifecycle task neither finished nor reached a gate"
                self.cond.wait(0.05)

    def open(self, i: int) -> None:
        with self.cond:
            ev = self.waiting.pop(i % len(self.waiting))
        ev.set()
        time.sleep(0.001)
        self.quiet()


class ModelMounter:
    def __init__(self, kernel: Kernel, gates: Gates) -> None:
        self.k, self.g = kernel, gates
        self.fail_next = False

    def mount(self, digest: str, mountpoint: Path, spec: dict[str, Any]) -> Inst:
        with self.k.lock:
            self.k.dirs.add(mountpoint)
        self.g.gate()  # the TOC fetch, the mount(2)
        with self.k.lock:
            if self.fail_next:
                self.fail_next = False
                raise OSError("registry said no")
            if self.k.top(mountpoint) is not None:
                self.k.errors.append(f"mount stacked on another at {mountpoint}")
            inst = Inst(next(self.k.ids), mountpoint)
            self.k.stacks.setdefault(mountpoint, []).append(inst)
            return inst

    def unmount(self, digest: str, mountpoint: Path, mounted: Inst, free_cache: bool) -> None:
        self.g.gate()
        with self.k.lock:
            if self.k.top(mountpoint) is mounted:  # as MountRef.unmount: only what the path shows
                self.k.stacks[mountpoint].pop()
            elif mounted in (self.k.stacks.get(mountpoint) or []):
                self.k.errors.append(f"unmount of {mounted.id} found it under another mount")

    def live(self, mounted: Inst) -> bool:
        with self.k.lock:
            return self.k.top(mounted.path) is mounted and mounted.alive

    def clear(self, mountpoint: Path) -> None:
        with self.k.lock:
            if self.k.top(mountpoint) is not None:
                self.k.errors.append(f"directory {mountpoint} removed under a mount")
            self.k.dirs.discard(mountpoint)


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.kernel = Kernel()
        self.gates = Gates()
        self.mounter = ModelMounter(self.kernel, self.gates)
        self.now = 0.0
        self.snapshots: dict[str, str] = {}  # snapshot name -> digest (the store)
        self.names = itertools.count(1)
        self.leases: list[Lease[Inst]] = []
        self.seen: list[tuple[str, Inst]] = []
        self.lc = self._new_lifecycle()

    def _new_lifecycle(self) -> Lifecycle[Inst]:
        return Lifecycle(
            self.mounter,
            lambda d: d in self.snapshots.values(),
            spawn=self.gates.spawn,
            spawn_release=self.gates.spawn,
            clock=lambda: self.now,
        )

    def _mp(self, digest: str) -> Path:
        return Path("/layers") / digest.replace(":", "-") / "fs"

    # -- what a node does ----------------------------------------------------------------------
    @rule(digest=st.sampled_from(DIGESTS), ahead=st.booleans())
    def pull_starts(self, digest: str, ahead: bool) -> None:
        """A Prepare takes a lease on its layer (or an image's other layer is mounted ahead)."""
        lease = self.lc.lease(digest, self._mp(digest), {"d": digest}, ahead=ahead, ttl=30.0 if ahead else None)
        self.gates.quiet()
        if not ahead:
            self.leases.append(lease)

    @precondition(lambda self: self.leases)
    @rule(i=st.integers(0, 100), give_up=st.booleans())
    def pull_ends(self, i: int, give_up: bool) -> None:
        """The Prepare commits a snapshot if its layer serves (checked live), else gives up."""
        lease = self.leases.pop(i % len(self.leases))
        if not give_up:
            try:
                m = lease.wait_live(0)
            except LayerMountError:
                pass
            else:
                if not self.mounter.live(m):
                    self.kernel.errors.append("a Prepare was told a dead layer serves")
                self.snapshots[f"s{next(self.names)}"] = lease.digest
        lease.release()
        self.gates.quiet()

    @precondition(lambda self: self.snapshots)
    @rule(i=st.integers(0, 100))
    def snapshot_removed(self, i: int) -> None:
        name = sorted(self.snapshots)[i % len(self.snapshots)]
        digest = self.snapshots.pop(name)
        self.lc.settle(digest)
        self.gates.quiet()

    @precondition(lambda self: self.snapshots)
    @rule(i=st.integers(0, 100))
    def container_starts(self, i: int) -> None:
        """Mounts(): the lower directory handed to containerd is the layer's live mount."""
        digest = self.snapshots[sorted(self.snapshots)[i % len(self.snapshots)]]
        with self.lc.lease(digest, self._mp(digest), lambda: {"d": digest}) as lease:
            try:
                m = lease.wait_live(0)
            except LayerMountError:
                pass  # containerd gets an error, never a plain directory
            else:
                if not self.mounter.live(m):
                    self.kernel.errors.append("a container was handed a layer that does not serve")
        self.gates.quiet()

    @precondition(lambda self: self.gates.waiting)
    @rule(i=st.integers(0, 100))
    def a_mount_or_unmount_proceeds(self, i: int) -> None:
        self.gates.open(i)

    @rule()
    def next_mount_fails(self) -> None:
        self.mounter.fail_next = True

    @rule(digest=st.sampled_from(DIGESTS))
    def connection_dies(self, digest: str) -> None:
        """The layer server loses a connection (killed without a holder, aborted)."""
        with self.kernel.lock:
            top = self.kernel.top(self._mp(digest))
            if top is not None:
                top.alive = False

    @rule()
    def health_check_reads(self) -> None:
        """The health loop reads the table; it acts on it later, when much may have changed."""
        self.seen = [(e.digest, m) for e, m in self.lc.serving()]

    @rule()
    def health_check_acts(self) -> None:
        for digest, m in self.seen:
            if not self.mounter.live(m):
                self.lc.repair(digest, m, "dead")
        self.gates.quiet()

    @rule(dt=st.sampled_from([1.0, 31.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.lc.sweep()
        self.gates.quiet()

    @rule()
    def daemon_restarts(self) -> None:
        """Everything in flight finishes in the server; a new daemon adopts what is mounted."""
        self.drain()
        self.leases.clear()
        self.lc = self._new_lifecycle()
        for d in DIGESTS:
            top = self.kernel.top(self._mp(d))
            if top is not None:
                self.lc.adopt(d, self._mp(d), {"d": d}, top)
            elif self._mp(d) in self.kernel.dirs and d not in self.snapshots.values():
                self.lc.tidy(d, self._mp(d))  # the start-up clean-up: a directory nothing uses
        self.gates.quiet()

    def drain(self) -> None:
        for _ in range(1000):
            self.gates.quiet()
            if not self.gates.waiting:
                return
            self.gates.open(0)
        raise AssertionError("the lifecycle never settles")

    # -- what must always hold -------------------------------------------------------------
    @invariant()
    def nothing_went_wrong(self) -> None:
        assert self.kernel.errors == []
        for path, stack in self.kernel.stacks.items():
            assert len(stack) <= 1, f"{len(stack)} mounts at {path}"

    def teardown(self) -> None:
        """Once everything settles: a wanted layer is served by exactly its entry's mount, an
        unwanted one is unmounted and its directory gone."""
        try:
            for lease in self.leases:
                lease.release()
            self.leases.clear()
            self.drain()
            self.now += 1000  # mounts ahead that no Prepare came for expire
            self.lc.sweep()
            self.drain()
            self.nothing_went_wrong()
            for d in DIGESTS:
                e = self.lc.get(d)
                top = self.kernel.top(self._mp(d))
                if d in self.snapshots.values():
                    assert e is not None and e.state in (State.SERVING, State.FAILED), (d, e)
                    if e.state == State.SERVING:
                        assert top is e.mounted
                else:
                    assert top is None, f"{d} is still mounted though nobody uses it"
                    assert self._mp(d) not in self.kernel.dirs
                    assert e is None or e.state == State.ABSENT
        finally:
            for ev in list(self.gates.waiting):
                ev.set()


LifecycleMachine.TestCase.settings = settings(
    max_examples=500, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)
test_lifecycle = LifecycleMachine.TestCase


def test_a_removal_racing_a_pull_leaves_the_pulls_mount_alone() -> None:
    """The race seen on nodes: image B's last snapshot of a layer goes while image A's
    Prepare of the same layer mounts it. The release must not take A's mount away."""
    m = LifecycleMachine()
    d = DIGESTS[0]
    m.pull_starts(d, ahead=False)  # A's Prepare: mounting (gate held)
    m.lc.settle(d)  # B's removal decides: a lease is held, so nothing happens
    m.drain()
    m.pull_ends(0, give_up=False)
    assert m.mounter.live(m.lc.get(d).mounted)  # type: ignore[union-attr, arg-type]
    m.teardown()


def test_a_prepare_that_gives_up_before_its_mount_ends_leaves_nothing_mounted() -> None:
    m = LifecycleMachine()
    d = DIGESTS[1]
    m.pull_starts(d, ahead=False)
    m.pull_ends(0, give_up=True)  # its mount still runs: released once it ends
    m.drain()
    assert m.kernel.top(m._mp(d)) is None and m._mp(d) not in m.kernel.dirs
    m.teardown()


def test_a_release_holds_back_its_own_layer_only() -> None:
    """A release (it may wait for the layer server) keeps a new mount of the same layer
    waiting until the old mount is gone, and the directory is kept for it; other layers'
    mounts go ahead."""
    m = LifecycleMachine()
    a, b = DIGESTS[0], DIGESTS[1]
    m.pull_starts(a, ahead=False)
    m.drain()
    m.pull_ends(0, give_up=True)  # a's lease ends: its release waits at the unmount
    assert m.lc.get(a).state == State.RELEASING and len(m.gates.waiting) == 1  # type: ignore[union-attr]
    m.pull_starts(b, ahead=False)
    assert len(m.gates.waiting) == 2  # b's mount did not wait for a's release
    m.pull_starts(a, ahead=False)
    assert len(m.gates.waiting) == 2  # a's new mount waits for the release
    m.gates.open(0)  # the unmount ends; the new mount of a starts on the directory kept for it
    assert m.lc.get(a).state == State.MOUNTING and m._mp(a) in m.kernel.dirs  # type: ignore[union-attr]
    m.drain()
    assert m.mounter.live(m.lc.get(a).mounted)  # type: ignore[union-attr, arg-type]
    m.teardown()
