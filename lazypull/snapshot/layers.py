"""The daemon's side of the layer server: mounts through it, its health, copies of the
layers' FUSE connections.

Which layers are mounted, and when a mount may go, is the lifecycle's business
(:mod:`lazypull.snapshot.lifecycle`); this module is how it mounts: ``FsdMounter`` asks
the layer server, and keeps for each mount instance a copy of its /dev/fuse fd and an
``O_PATH`` hold on its root (:class:`~lazypull.fs.fuse.mounts.MountRef`). The fd copy
means a layer server that dies (``kill -9``, OOM) loses nothing: the kernel keeps each
connection and queues new requests, and the next server gets the fds back from its fd
holder (systemd's store, or :mod:`lazypull.service.fdholder`) or from us (``Attach``).
The root hold means a release unmounts that instance and no other, and tells at once (no
request to the server) whether the path still shows it.

Health: every few seconds the loop asks the server for its layer table (a layer whose
connection ended is ``dead``; another mount id means another instance) and probes each
mount with ``statfs`` (FUSE never caches STATFS, so an answer proves the layer is served).
Probes run a few at a time, each layer's on its own, so a layer whose requests are stuck
holds up only its own probe. A layer is *wedged* only if its probe is stuck longer than
the wedge timeout while probes of other layers were answered after it began: a server too
busy to answer anyone (index builds, a flood of reads) is busy, not a wedged layer, and
aborting its innocent connections would break running containers for good. A wedged
layer's connection is aborted (counted in ``lazypull_layer_aborted``); a layer that is not
healthy is logged, exported as ``lazypull_layer_health 0`` and repaired through the
lifecycle (unmounted, mounted again).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazypull.fs.fsdclient import FsdClient, FsdError, FsdUnavailable, is_server_process, start_server
from lazypull.fs.fuse.mounts import MountRef
from lazypull.fs.fuse.server import is_mounted
from lazypull.snapshot.lifecycle import LayerMountError, Lease, Lifecycle, State

log = logging.getLogger(__name__)

__all__ = ["AHEAD_TTL", "LayerMountError", "MountedLayer", "RemoteLayers", "abort_connection", "spec_of"]

PROBERS = 8  # statfs probes in flight at once: a few stuck layers do not stop the others' probes
AHEAD_TTL = 300.0  # a layer mounted ahead of its Prepare is kept this long for it (an abandoned pull's go)


@dataclass(eq=False)
class MountedLayer:
    """One mount instance of a layer, as the daemon holds it."""

    mount_id: str  # the layer server's name for it
    fd: int  # our copy of its FUSE connection
    root: MountRef  # our hold on its root
    healthy: bool = True
    probe_started: float = 0.0  # monotonic time of a statfs probe still running (0: none)
    files: int = 0  # inodes the layer shows (the server's count at mount): the snapshot's Usage

    @property
    def dev(self) -> str:
        return self.root.dev

    def close(self) -> None:
        self.root.close()
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class FsdMounter:
    """Mounts and unmounts layers through the layer server, for the lifecycle."""

    def __init__(self, layers: RemoteLayers) -> None:
        self.layers = layers

    def mount(self, digest: str, mountpoint: Path, spec: dict[str, Any]) -> MountedLayer:
        mountpoint.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        summary, fd = self.layers.mount_rpc(spec, mountpoint)
        try:
            root = MountRef.open(str(mountpoint), expect_dev=str(summary.get("dev") or "") or None)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise LayerMountError(f"the layer server mounted {mountpoint}, yet the path shows another: {e}") from None
        return MountedLayer(str(summary.get("mount_id", "")), fd, root, files=int(summary.get("files") or 0))

    def unmount(self, digest: str, mountpoint: Path, mounted: MountedLayer, free_cache: bool) -> None:
        try:
            self.layers.client.unmount(mountpoint, free_cache=free_cache, mount_id=mounted.mount_id)
        except FsdError as e:
            log.warning("unmounting %s through the layer server failed (%s); unmounting it here", mountpoint, e)
        try:
            mounted.root.unmount()  # nothing if the server did; never a newer mount at the path
        finally:
            mounted.close()
        # No empty directory where the layer was: a container given this path before the
        # release (a repair) fails to mount it, loudly, instead of starting without the layer.
        try:
            os.rmdir(mountpoint)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove %s after unmounting it: %s", mountpoint, e)

    def live(self, mounted: MountedLayer) -> bool:
        """Shown at its path (no request to the server), and served: the server's word on its
        instance; a server that does not answer now (restarting) is no verdict, as the
        kernel queues the requests until its successor serves them."""
        if not mounted.healthy or not mounted.root.shown():
            return False
        try:
            state = self.layers.client.states([mounted.mount_id]).get(mounted.mount_id)
            if state == "waiting-fd":  # a new server we have not handed our fds to yet
                self.layers.ensure_server()
                state = self.layers.client.states([mounted.mount_id]).get(mounted.mount_id)
        except FsdUnavailable:
            return True
        except FsdError:
            return False
        if state != "serving":
            mounted.healthy = False
        return state == "serving"

    def clear(self, mountpoint: Path) -> None:
        d = mountpoint.parent
        if is_mounted(mountpoint):
            log.error("not removing %s: something is mounted there", d)
            return
        shutil.rmtree(d, ignore_errors=True)


class RemoteLayers:
    def __init__(
        self,
        root: Path,
        address: Path,
        *,
        in_use: Callable[[str], bool] = lambda _digest: False,
        mount_timeout: float = 60.0,
        memory_bytes: int | None = None,
        index_memory: tuple[int, int] = (0, 0),
        health_interval: float = 2.0,
        wedge_timeout: float = 10.0,
    ) -> None:
        self.root = root
        self.client = FsdClient(address)
        self.mount_timeout = mount_timeout
        self.memory_bytes = memory_bytes
        self.index_memory = index_memory  # the server's budget and one image's share (0: its defaults)
        self.health_interval = health_interval
        self.wedge_timeout = wedge_timeout
        self._ahead = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mount-ahead")
        self.lifecycle: Lifecycle[MountedLayer] = Lifecycle(
            FsdMounter(self), in_use, spawn_ahead=self._queue_ahead
        )
        self._server_lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self.instance = ""
        self.server_pid = 0
        self.server_up = False
        self.server_restarts = 0
        self.unhealthy_events = 0
        self.aborted = 0  # wedged connections aborted
        self.last_answer = 0.0  # monotonic time the latest probe of any layer was answered
        self._probes = ThreadPoolExecutor(max_workers=PROBERS, thread_name_prefix="layer-probe")
        self._stop = threading.Event()

    def _queue_ahead(self, task: Callable[[], None]) -> None:
        """Mounts ahead run a few at a time, in the order asked: the layer containerd asks for
        next is ready first (a layer asked for meanwhile does not wait in this queue)."""
        self._ahead.submit(task)

    # -- the server ---------------------------------------------------------------------
    def ensure_server(self) -> None:
        """A running server that serves every layer we hold (started and re-attached if needed)."""
        with self._server_lock:
            st = self.client.alive()
            if st is None:
                if self._proc is not None:
                    self._proc.poll()  # reap a dead one
                self.client, proc = start_server(
                    self.root / "fsd",
                    self.client.address,
                    log_path=self.root / "fsd.log",
                    memory_bytes=self.memory_bytes,
                    index_memory=self.index_memory,
                )
                if proc is not None:
                    self._proc = proc
                st = self.client.alive()
                if st is None:
                    raise FsdError("layer server does not answer after its start")
            if self.instance and st["instance"] != self.instance:
                self.server_restarts += 1
                log.warning("layer server replaced (pid %s -> %s)", self.server_pid, st["pid"])
            if st["instance"] != self.instance:
                if self._proc is not None:
                    self._proc.poll()  # reap the one we started, if a successor took over from it
                self.instance, self.server_pid = st["instance"], int(st["pid"])
                self._reattach()
            self.server_up = True

    def _reattach(self) -> None:
        """Give a new server the connections we hold that it does not serve yet."""
        serving = {r.get("mount_id") for r in self.client.list() if r["state"] == "serving"}
        held = [(e, m) for e, m in self.lifecycle.serving() if m.fd >= 0 and m.mount_id not in serving]
        if not held:
            if serving:  # its fd holder (or systemd) gave it the connections
                log.info("the layer server serves the %d layers it had without us", len(serving))
            return
        t0 = time.monotonic()
        res = self.client.attach(
            [{"mountpoint": str(e.mountpoint), "spec": e.spec} for e, _ in held], [m.fd for _, m in held]
        )
        ok = sum(1 for r in res if r.get("state") == "serving")
        took = time.monotonic() - t0
        log.info("handed %d layers back to the layer server (%d serving) in %.2fs", len(held), ok, took)

    def mount_rpc(self, spec: dict[str, Any], mountpoint: Path) -> tuple[dict[str, Any], int]:
        """Ask the server to mount a layer. A server known to be up is asked at once (no status
        round trip per layer); one that turns out gone is started (and handed its layers
        back) and asked again."""
        if not self.server_up or not self.instance:
            self.ensure_server()
        instance = self.instance
        try:
            return self.client.mount(spec, mountpoint, timeout=self.mount_timeout + 30)
        except FsdUnavailable:
            self.ensure_server()
            if self.instance == instance:
                raise  # the same server, alive: the mount itself failed (e.g. timed out)
            return self.client.mount(spec, mountpoint, timeout=self.mount_timeout + 30)

    # -- leases (the lifecycle's, with this node's ahead queue and deadlines) ---------------
    def lease(
        self,
        digest: str,
        mountpoint: Path,
        spec: dict[str, Any] | Callable[[], dict[str, Any] | None],
        *,
        ahead: bool = False,
    ) -> Lease[MountedLayer]:
        return self.lifecycle.lease(digest, mountpoint, spec, ahead=ahead, ttl=AHEAD_TTL if ahead else None)

    def active(self, digest: str) -> bool:
        return self.lifecycle.active(digest)

    def settle(self, digest: str) -> None:
        """A snapshot of *digest* went: unmount the layer if nothing else uses it."""
        self.lifecycle.settle(digest)

    def health(self) -> list[tuple[str, bool]]:
        return [(e.digest, m.healthy) for e, m in self.lifecycle.serving()]

    def server_layers(self) -> dict[str, dict[str, Any]]:
        return {r["mountpoint"]: r for r in self.client.list()}

    def restore(self, wanted: dict[str, tuple[Path, Callable[[], dict[str, Any] | None]]]) -> int:
        """After a daemon (re)start: adopt the layers the server still serves (those no snapshot
        uses are released at once: an interrupted pull's), mount the others again.

        *wanted*: digest -> (mountpoint, its spec when needed) of every remote snapshot."""
        self.ensure_server()
        mine = str(self.root / "layers") + os.sep
        table = {mp: r for mp, r in self.server_layers().items() if mp.startswith(mine)}
        serving = [mp for mp, r in table.items() if r["state"] == "serving"]
        fds = self.client.fds(serving) if serving else {}
        restored = released = 0
        for mp, fd in fds.items():
            r = table[mp]
            digest = str(r["digest"])
            try:
                root = MountRef.open(mp, expect_dev=str(r.get("dev") or "") or None)
            except OSError as e:
                log.warning("layer %s at %s: %s; mounting it again", digest[7:19], mp, e)
                os.close(fd)
                continue
            m = MountedLayer(str(r.get("mount_id", "")), fd, root, files=int(r.get("files") or 0))
            want = wanted.get(digest)
            spec = (want[1]() if want else None) or {}
            if not self.lifecycle.adopt(digest, Path(mp), spec, m):
                m.close()
            elif want is not None:
                restored += 1
            else:
                released += 1
        if released:
            log.info("released %d layers that no snapshot uses (a pull interrupted by the restart)", released)
        leases = []
        for digest, (path, spec_fn) in wanted.items():
            live = self.lifecycle.get(digest)
            if live is not None and live.state == State.SERVING:
                continue
            state = table.get(str(path), {}).get("state", "missing")
            if spec_fn() is None:
                log.error("layer mount at %s is %s and cannot be remounted (no saved spec)", path, state)
                continue
            log.warning("layer mount for %s is %s; mounting it again", digest[7:19], state)
            leases.append(self.lease(digest, path, spec_fn))
        for lease in leases:
            try:
                lease.wait(self.mount_timeout)
                restored += 1
            except LayerMountError as e:
                log.error("cannot remount layer %s: %s", lease.digest[7:19], e)
            finally:
                lease.release()
        return restored

    # -- health ---------------------------------------------------------------------------
    def run_health(self) -> None:
        threading.Thread(target=self._health_loop, daemon=True, name="layer-health").start()
        threading.Thread(target=self._prober, daemon=True, name="layer-probe").start()

    def close(self) -> None:
        self._stop.set()

    def stop_server(self, timeout: float = 30.0) -> bool:
        """Stop the layer server this process started, unmounting its layers (a daemon run by
        hand leaves nothing behind); False if another process started it."""
        if self._proc is None:
            return False
        self.close()  # no health check restarts it meanwhile
        with contextlib.suppress(FsdError):  # gone already, or gone before it answered
            self.client.shutdown(unmount_all=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout)
        return True

    def _health_loop(self) -> None:
        failures = 0
        while not self._stop.wait(self.health_interval):
            self.lifecycle.sweep()  # mounts ahead whose pull never came back
            st = self.client.alive(timeout=max(2.0, self.health_interval))
            if st is None:
                failures += 1
                self.server_up = False
                if failures >= 2 or (self._proc is not None and self._proc.poll() is not None):
                    self._restart_server()
                continue
            failures = 0
            try:
                if st["instance"] != self.instance:
                    self.ensure_server()
                self._check_layers()
            except FsdError as e:
                log.warning("layer health check failed: %s", e)

    def _restart_server(self) -> None:
        log.warning("layer server (pid %d) does not answer; starting a new one", self.server_pid)
        if self.server_pid and is_server_process(self.server_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.server_pid, signal.SIGKILL)  # wedged: its connections live on in our fds
            deadline = time.monotonic() + 5
            while is_server_process(self.server_pid) and time.monotonic() < deadline:
                if self._proc is not None:
                    self._proc.poll()
                time.sleep(0.02)
        try:
            self.ensure_server()
        except FsdError as e:
            log.error("cannot restart the layer server: %s", e)

    def _check_layers(self) -> None:
        # The instances first, the server's table after: each of them was mounted (and is in
        # the server's table) before the table was read; one mounted meanwhile is not judged
        # by a table older than it.
        serving = list(self.lifecycle.serving())
        table = {r.get("mount_id"): r for r in self.client.list()}
        now = time.monotonic()
        for e, m in serving:
            row = table.get(m.mount_id)
            wedged = self.wedged(m, now)
            shown = m.root.shown()
            if row is not None and row["state"] == "serving" and not wedged and shown:
                m.healthy = True
                continue
            if wedged:
                reason = f"wedged (statfs unanswered for {now - m.probe_started:.0f}s)"
            elif not shown:
                reason = "its path no longer shows its mount"
            else:
                reason = row["state"] if row is not None else "missing"
            m.healthy = False
            self.unhealthy_events += 1
            if wedged and abort_connection(m.dev):
                self.aborted += 1
                log.error("layer %s: its FUSE connection aborted (its requests stuck, others served)", e.digest[7:19])
            self.lifecycle.repair(e.digest, m, reason)

    def wedged(self, m: MountedLayer, now: float) -> bool:
        """Its probe is stuck past the timeout while the server answered another layer's probe
        that began later: this layer is stuck, not the server."""
        started = m.probe_started
        return bool(started) and now - started > self.wedge_timeout and self.last_answer > started

    def _prober(self) -> None:
        """Probe every healthy layer each interval, a few at a time; a layer whose last probe
        has not come back is not probed again (it would only take another prober)."""
        while not self._stop.wait(self.health_interval):
            for e, m in list(self.lifecycle.serving()):
                if m.healthy and not m.probe_started:
                    m.probe_started = time.monotonic()
                    self._probes.submit(self._probe, e.mountpoint, m)

    def _probe(self, mountpoint: Path, m: MountedLayer) -> None:
        try:
            os.statvfs(m.root.path)
            self.last_answer = time.monotonic()
        except OSError as x:
            if x.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                m.healthy = False
        finally:
            m.probe_started = 0.0

    def stats(self) -> list[dict[str, Any]]:
        return list(self.server_stats().get("layers") or [])

    def server_stats(self) -> dict[str, Any]:
        """The server's ``stats`` answer (its layers, caches, index memory); {} if it is down."""
        try:
            return dict(self.client.stats())
        except FsdError:
            return {}


FUSECTL = Path("/sys/fs/fuse/connections")


def ensure_fusectl() -> None:
    """Mount the fusectl filesystem (per-connection ``abort``, ``waiting``) if it is not."""
    if FUSECTL.is_dir() and not any(FUSECTL.iterdir()):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(FUSECTL)], capture_output=True, check=False)


def abort_connection(target: Path | str) -> bool:
    """Abort a FUSE connection (its waiting requests fail) without touching the mount itself.

    *target*: the connection's device ("major:minor"), or a mountpoint (whatever it shows)."""
    ensure_fusectl()
    dev = str(target)
    if ":" not in dev or "/" in dev:
        try:
            ref = MountRef.open(str(target))
        except OSError:
            return False
        dev = ref.dev
        ref.close()
    try:
        Path(f"/sys/fs/fuse/connections/{dev.split(':')[1]}/abort").write_text("1")
        return True
    except (OSError, IndexError) as e:
        log.warning("cannot abort the FUSE connection %s (%s): %s", dev, target, e)
        return False


def spec_of(remote: dict[str, Any]) -> dict[str, Any] | None:
    raw = remote.get("spec")
    if not raw:
        return None
    try:
        return dict(json.loads(raw))
    except ValueError:
        return None
