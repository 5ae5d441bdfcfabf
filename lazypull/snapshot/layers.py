"""The daemon's side of the layer server: which layers are mounted, their health, and
copies of their FUSE connections.

The daemon holds a copy of every layer's /dev/fuse fd (from the ``Mount`` reply), so a
layer server that dies (``kill -9``, OOM) loses nothing: the kernel keeps each connection
and queues new requests, the health loop starts a new server and hands the fds back
(``Attach``), and readers carry on without a remount. Under systemd the server's unit
keeps them in its fd store instead and the hand-back finds them already served.

Health: every few seconds the loop asks the server for its layer table (a layer whose
connection ended is ``dead``) and probes each mount with ``statfs`` from one prober
thread (FUSE never caches STATFS, so an answer proves the layer is served; a probe
stuck longer than the wedge timeout means wedged: its connection is aborted). A layer
that is not healthy is logged, exported as ``lazypull_layer_health 0`` and mounted again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazypull.errors import LazypullError
from lazypull.fs.fuse.server import unmount
from lazypull.fs.spec import LayerSpec
from lazypull.service.fsdclient import FsdClient, FsdError, FsdUnavailable, is_server_process, start_server

log = logging.getLogger(__name__)


class LayerMountError(LazypullError):
    pass


@dataclass
class LayerHandle:
    digest: str
    mountpoint: Path
    spec: dict[str, Any]
    ready: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    fd: int = -1  # our copy of the connection
    healthy: bool = False
    remounting: bool = False
    probe_started: float = 0.0  # monotonic time of a statfs probe still running (0: none)
    claimed: bool = False  # its mount has begun (a queued mount-ahead of it then does nothing)

    def wait(self, timeout: float) -> None:
        if not self.ready.wait(timeout):
            raise LayerMountError(f"layer mount at {self.mountpoint} not ready after {timeout}s")
        if self.error:
            raise LayerMountError(f"mounting layer failed: {self.error}")

    def close_fd(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class RemoteLayers:
    def __init__(
        self,
        root: Path,
        address: Path,
        *,
        mount_timeout: float = 60.0,
        memory_bytes: int | None = None,
        health_interval: float = 2.0,
        wedge_timeout: float = 10.0,
    ) -> None:
        self.root = root
        self.client = FsdClient(address)
        self.mount_timeout = mount_timeout
        self.memory_bytes = memory_bytes
        self.health_interval = health_interval
        self.wedge_timeout = wedge_timeout
        self._handles: dict[str, LayerHandle] = {}
        self._lock = threading.Lock()
        self._server_lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self.instance = ""
        self.server_pid = 0
        self.server_up = False
        self.server_restarts = 0
        self.unhealthy_events = 0
        self._stop = threading.Event()
        self._ahead = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mount-ahead")

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
        serving = {r["mountpoint"] for r in self.client.list() if r["state"] == "serving"}
        with self._lock:
            held = [h for h in self._handles.values() if h.fd >= 0 and str(h.mountpoint) not in serving]
        if not held:
            return
        t0 = time.monotonic()
        res = self.client.attach(
            [{"mountpoint": str(h.mountpoint), "spec": h.spec} for h in held], [h.fd for h in held]
        )
        ok = sum(1 for r in res if r.get("state") == "serving")
        took = time.monotonic() - t0
        log.info("handed %d layers back to the layer server (%d serving) in %.2fs", len(held), ok, took)

    # -- mounts ---------------------------------------------------------------------------
    def get(self, digest: str) -> LayerHandle | None:
        with self._lock:
            return self._handles.get(digest)

    def handles(self) -> list[LayerHandle]:
        with self._lock:
            return list(self._handles.values())

    def known(self, digest: str) -> bool:
        """Whether the layer is being mounted or serves (``start`` would return its handle as is):
        each Prepare of an image starts its other layers, this spares building their specs again."""
        with self._lock:
            h = self._handles.get(digest)
        return h is not None and _current(h)

    def start(self, digest: str, mountpoint: Path, spec: dict[str, Any], ahead: bool = False) -> LayerHandle:
        """The mount of a layer: serving, being mounted, or started now in the background.

        *ahead*: mounted before anyone asks (an image's next layers), a few at a time in the
        order given, so the layer containerd asks for next is ready first. A layer asked for
        (not *ahead*) that still waits in that queue is mounted at once: with several images
        pulled together, its Prepare must not wait behind the other images' layers."""
        with self._lock:
            h = self._handles.get(digest)
            if h is not None and _current(h):
                if LayerSpec.from_json(spec).has_secrets:
                    h.spec = spec  # fresh credentials (memory only) for its later re-mounts and re-attaches
                now, later = not ahead and not h.claimed and not h.ready.is_set(), False
            else:
                if h is not None:
                    h.close_fd()
                h = self._handles[digest] = LayerHandle(digest, mountpoint, spec)
                now, later = not ahead, ahead
        if later:
            self._ahead.submit(self._mount, h)
        elif now:
            threading.Thread(target=self._mount, args=(h,), daemon=True, name=f"mount-{digest[7:15]}").start()
        return h

    def _mount(self, h: LayerHandle) -> None:
        with self._lock:
            if h.claimed:
                return  # mounted (or being mounted) by a Prepare that did not wait for the queue
            h.claimed = True
        try:
            _summary, fd = self._mount_rpc(h)
            h.close_fd()
            h.fd, h.healthy = fd, True
        except Exception as e:
            h.error = str(e) or type(e).__name__
            log.info("mount of layer %s failed: %s", h.digest[7:19], h.error)
        finally:
            h.ready.set()

    def _mount_rpc(self, h: LayerHandle) -> tuple[dict[str, Any], int]:
        """Ask the server to mount *h*. A server known to be up is asked at once (no status
        round trip per layer); one that turns out gone is started (and handed its layers
        back) and asked again."""
        if not self.server_up or not self.instance:
            self.ensure_server()
        instance = self.instance
        try:
            return self.client.mount(h.spec, h.mountpoint, timeout=self.mount_timeout + 30)
        except FsdUnavailable:
            self.ensure_server()
            if self.instance == instance:
                raise  # the same server, alive: the mount itself failed (e.g. timed out)
            return self.client.mount(h.spec, h.mountpoint, timeout=self.mount_timeout + 30)

    def stop(self, digest: str, free_cache: bool, mountpoint: Path | None = None) -> None:
        """Unmount a layer (its chunks leave the cache with *free_cache*)."""
        with self._lock:
            h = self._handles.pop(digest, None)
        self._unmount(h, free_cache, mountpoint)

    def abandon(self, digest: str, mountpoint: Path) -> None:
        """Give up on a layer whose mount is late: forget it now, unmount it in the background
        once its mount ends (Prepare must not wait for a registry that does not answer)."""
        with self._lock:
            h = self._handles.pop(digest, None)

        def later() -> None:
            if h is not None:
                h.ready.wait(self.mount_timeout)
            if self.get(digest) is None:  # not mounted again meanwhile
                self._unmount(h, False, mountpoint)

        threading.Thread(target=later, daemon=True, name=f"abandon-{digest[7:15]}").start()

    def _unmount(self, h: LayerHandle | None, free_cache: bool, mountpoint: Path | None) -> None:
        mp = h.mountpoint if h is not None else mountpoint
        if h is not None:
            h.ready.wait(self.mount_timeout)
        try:
            if mp is not None:
                self.client.unmount(mp, free_cache=free_cache)
        except FsdError as e:
            log.warning("unmounting %s through the layer server failed (%s); unmounting it here", mp, e)
            if mp is not None:
                with contextlib.suppress(OSError):
                    unmount(str(mp))
        if h is not None:
            h.close_fd()

    def server_layers(self) -> dict[str, dict[str, Any]]:
        return {r["mountpoint"]: r for r in self.client.list()}

    def restore(self, wanted: list[tuple[str, Path, dict[str, Any] | None]]) -> int:
        """After a daemon (re)start: adopt layers the server still serves, remount the others.

        *wanted*: (digest, mountpoint, spec or None when unknown) of every remote snapshot."""
        self.ensure_server()
        table = self.server_layers()
        adopt = [(d, mp, s) for d, mp, s in wanted if table.get(str(mp), {}).get("state") == "serving"]
        fds = self.client.fds([str(mp) for _, mp, _ in adopt]) if adopt else {}
        restored = 0
        for digest, mp, spec in wanted:
            if self.get(digest) is not None:
                continue
            fd = fds.pop(str(mp), -1)
            if fd >= 0:
                h = LayerHandle(digest, mp, spec or {}, fd=fd, healthy=True)
                h.ready.set()
                with self._lock:
                    self._handles[digest] = h
                restored += 1
                continue
            state = table.get(str(mp), {}).get("state", "missing")
            if spec is None:
                log.error("layer mount at %s is %s and cannot be remounted (no saved spec)", mp, state)
                continue
            log.warning("layer mount for %s is %s; mounting it again", digest[7:19], state)
            h = self.start(digest, mp, spec)
            try:
                h.wait(self.mount_timeout)
                restored += 1
            except LayerMountError as e:
                log.error("cannot remount layer %s: %s", digest[7:19], e)
        for fd in fds.values():
            os.close(fd)
        return restored

    # -- health ---------------------------------------------------------------------------
    def run_health(self) -> None:
        threading.Thread(target=self._health_loop, daemon=True, name="layer-health").start()
        threading.Thread(target=self._prober, daemon=True, name="layer-probe").start()

    def close(self) -> None:
        self._stop.set()

    def _health_loop(self) -> None:
        failures = 0
        while not self._stop.wait(self.health_interval):
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
        table = self.server_layers()
        now = time.monotonic()
        for h in self.handles():
            if not h.ready.is_set() or h.error or h.remounting:
                continue
            state = table.get(str(h.mountpoint), {}).get("state", "missing")
            wedged = h.probe_started and now - h.probe_started > self.wedge_timeout
            if state == "serving" and not wedged:
                h.healthy = True
                continue
            reason = f"wedged (statfs unanswered for {now - h.probe_started:.0f}s)" if wedged else state
            h.healthy = False
            self.unhealthy_events += 1
            log.warning("layer %s at %s is not serving (%s): mounting it again", h.digest[7:19], h.mountpoint, reason)
            if wedged:
                abort_connection(h.mountpoint)
            self._remount(h)

    def _remount(self, h: LayerHandle) -> None:
        h.remounting = True

        def run() -> None:
            try:
                self.ensure_server()
                _summary, fd = self.client.mount(h.spec, h.mountpoint, timeout=self.mount_timeout + 30)
                h.close_fd()
                h.fd, h.healthy, h.probe_started = fd, True, 0.0
                log.info("layer %s mounted again at %s", h.digest[7:19], h.mountpoint)
            except Exception as e:
                log.error("remounting layer %s failed: %s", h.digest[7:19], e)
            finally:
                h.remounting = False

        threading.Thread(target=run, daemon=True, name=f"remount-{h.digest[7:15]}").start()

    def check_now(self, h: LayerHandle) -> bool:
        """Is this layer served right now? (Prepare asks before answering "already exists".)"""
        if not h.ready.is_set() or h.error:
            return False
        try:
            state = self.server_layers().get(str(h.mountpoint), {}).get("state")
        except FsdError:
            return False
        h.healthy = state == "serving"
        return h.healthy

    def remount_now(self, h: LayerHandle) -> None:
        self.ensure_server()
        _summary, fd = self.client.mount(h.spec, h.mountpoint, timeout=self.mount_timeout + 30)
        h.close_fd()
        h.fd, h.healthy, h.probe_started = fd, True, 0.0

    def _prober(self) -> None:
        """statfs each healthy layer in turn; one that hangs is seen as wedged by the health loop."""
        while not self._stop.wait(self.health_interval):
            for h in self.handles():
                if not h.healthy or h.remounting:
                    continue
                h.probe_started = time.monotonic()
                try:
                    os.statvfs(h.mountpoint)
                except OSError as e:
                    if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                        h.healthy = False
                finally:
                    h.probe_started = 0.0

    def stats(self) -> list[dict[str, Any]]:
        try:
            return list(self.client.stats()["layers"])
        except FsdError:
            return []


def _current(h: LayerHandle) -> bool:
    """Being mounted, or mounted and healthy: nothing to start for this layer."""
    return not h.ready.is_set() or (not h.error and h.healthy)


FUSECTL = Path("/sys/fs/fuse/connections")


def ensure_fusectl() -> None:
    """Mount the fusectl filesystem (per-connection ``abort``, ``waiting``) if it is not."""
    if FUSECTL.is_dir() and not any(FUSECTL.iterdir()):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(FUSECTL)], capture_output=True, check=False)


def abort_connection(mountpoint: Path) -> bool:
    """Abort a FUSE connection (its waiting requests fail) without touching the mount itself."""
    ensure_fusectl()
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4].replace("\\040", " ") == target:
                minor = parts[2].split(":")[1]
                try:
                    Path(f"/sys/fs/fuse/connections/{minor}/abort").write_text("1")
                    return True
                except OSError as e:
                    log.warning("cannot abort the FUSE connection of %s: %s", mountpoint, e)
    return False


def spec_of(remote: dict[str, Any]) -> dict[str, Any] | None:
    raw = remote.get("spec")
    if not raw:
        return None
    try:
        return dict(json.loads(raw))
    except ValueError:
        return None
