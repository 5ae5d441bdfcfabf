"""One process per mounted layer, outliving whoever started it.

The snapshotter daemon (or ``lazypull mount``) spawns ``python -m lazypull.fs.mountproc
STATE_DIR`` in its own session. The process reads ``STATE_DIR/spec.json``, fetches the
footer and TOC, mounts the layer, writes ``state.json`` (pid, mountpoint, ready), then
prefetches, fetches the rest in the background, and publishes ``stats.json``. It
serves until the layer is unmounted or it gets SIGTERM (then it unmounts itself), so
a daemon restart — even ``kill -9`` — leaves running containers' layers serving, and
the new daemon re-adopts them from ``state.json``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazypull.errors import LazypullError
from lazypull.fs.fuse.server import FuseServer, unmount
from lazypull.fs.spec import LayerSpec, open_layer_fs
from lazypull.fs.stats import OpStats, read_stats, write_stats
from lazypull.registry.credentials import Credential

log = logging.getLogger("lazypull.mount")


class MountError(LazypullError):
    pass


@dataclass
class MountHandle:
    pid: int
    mountpoint: Path
    state_dir: Path

    @property
    def stats_path(self) -> Path:
        return self.state_dir / "stats.json"

    def state(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return is_mounted(self.mountpoint)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.state()
            if st.get("error"):
                raise MountError(f"mounting layer failed: {st['error']}")
            if st.get("ready"):
                return
            if not _pid_alive(self.pid):
                raise MountError(f"layer mount process exited: {_tail(self.state_dir / 'mount.log')}")
            time.sleep(0.02)
        raise MountError(f"layer mount at {self.mountpoint} not ready after {timeout}s")

    def wait_prefetch(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            st = read_stats(self.stats_path) or {}
            if st.get("prefetch_done"):
                return True
            if time.monotonic() >= deadline or not _pid_alive(self.pid):
                return False
            time.sleep(0.02)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return "(no log)"


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if line.split()[4].replace("\\040", " ") == target:
                return True
    return False


def spawn_layer_mount(
    spec: LayerSpec, mountpoint: Path, state_dir: Path, credential: Credential | None = None
) -> MountHandle:
    """Start the mount process; a *credential* (the kubelet's) goes through its stdin, never to disk."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    mountpoint.mkdir(parents=True, exist_ok=True)
    (state_dir / "state.json").unlink(missing_ok=True)
    spec.save(state_dir / "spec.json")
    (state_dir / "mountpoint").write_text(str(mountpoint))
    logf = open(state_dir / "mount.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "lazypull.fs.mountproc", str(state_dir)],
        stdin=subprocess.PIPE if credential else subprocess.DEVNULL,
        stdout=logf,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
    )
    logf.close()
    if credential and proc.stdin:
        with proc.stdin:
            proc.stdin.write(json.dumps([credential.username, credential.secret, credential.identity_token]).encode())
    return MountHandle(proc.pid, mountpoint, state_dir)


def adopt_layer_mount(state_dir: Path) -> MountHandle | None:
    """Re-attach to a mount process started by an earlier daemon, if it still serves."""
    try:
        st = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    h = MountHandle(int(st["pid"]), Path(st["mountpoint"]), state_dir)
    return h if st.get("ready") and h.alive() else None


FREE_CACHE_MARKER = "free-cache"


def stop_layer_mount(h: MountHandle, timeout: float = 10.0, free_cache: bool = False) -> None:
    """Unmount and end the process; no mount, process or state is left behind.

    With *free_cache* the process deletes its layer's chunks from the cache on the way out
    (the layer is no longer used; a chunk shared with another layer is simply refetched)."""
    if free_cache:
        (h.state_dir / FREE_CACHE_MARKER).touch()
    if is_mounted(h.mountpoint):
        unmount(str(h.mountpoint))
    if _pid_alive(h.pid):
        try:
            os.kill(h.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while _pid_alive(h.pid) and time.monotonic() < deadline:
            _reap(h.pid)
            time.sleep(0.02)
        if _pid_alive(h.pid):
            os.kill(h.pid, signal.SIGKILL)
    _reap(h.pid)
    for f in ("state.json", "spec.json", "stats.json", "mountpoint", FREE_CACHE_MARKER):
        (h.state_dir / f).unlink(missing_ok=True)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# -- the process itself ----------------------------------------------------------------
def _write_state(state_dir: Path, **kw: Any) -> None:
    write_stats(state_dir / "state.json", {"pid": os.getpid(), **kw})


def main(state_dir_arg: str) -> int:
    state_dir = Path(state_dir_arg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = LayerSpec.load(state_dir / "spec.json")
    mountpoint = Path((state_dir / "mountpoint").read_text())
    desc = spec.descriptor
    credential = None
    if spec.registry.get("credential_stdin"):  # empty when re-spawned by a restarted daemon
        raw = sys.stdin.read()
        credential = Credential(*json.loads(raw)) if raw else None
    try:
        fs, fetcher, source, index = open_layer_fs(spec, credential)
    except Exception as e:
        log.error("layer %s: cannot open: %s", desc.digest, e)
        _write_state(state_dir, mountpoint=str(mountpoint), error=str(e))
        return 1
    ops = OpStats()
    if spec.record_access:
        fs.accessed = {}
    server = FuseServer(fs, str(mountpoint), threads=spec.threads, on_op=ops.observe, passthrough=spec.passthrough)
    try:
        server.mount()
    except OSError as e:
        _write_state(state_dir, mountpoint=str(mountpoint), error=str(e))
        return 1
    flags = {"prefetch_done": not spec.prefetch, "background_done": False}
    stop = threading.Event()

    def publish() -> None:
        st = fetcher.stats
        write_stats(
            state_dir / "stats.json",
            {
                "layer": desc.digest,
                "size": desc.size,
                "format": index.format,
                "files": fs.inode_count,
                "fetched_bytes": source.bytes_read,
                "requests": source.reads,
                "prefetched_bytes": st.prefetched_bytes,
                "background_bytes": st.background_bytes,
                "cache_hits": st.cache_hits,
                "cache_requests": st.cache_requests,
                "fetch_errors": st.fetch_errors,
                "verify_errors": st.verify_errors,
                "bytes_served": fs.bytes_served,
                "passthrough": server.passthrough_active,
                "passthrough_files": len(server._backing),
                "ops": ops.snapshot(),
                **flags,
            },
        )

        if fs.accessed is not None:
            lines = "".join(json.dumps({"path": "/" + p}) + "\n" for p in list(fs.accessed))
            (state_dir / "accessed.jsonl").write_text(lines)

    def fetch_loop() -> None:
        if spec.prefetch:
            t0 = time.monotonic()
            n = fetcher.prefetch()
            log.info("layer %s: prefetched %d bytes in %.2fs", desc.digest[7:19], n, time.monotonic() - t0)
        flags["prefetch_done"] = True
        publish()
        if spec.background_fetch and not stop.is_set():
            n = fetcher.background_fetch(stop)
            flags["background_done"] = not stop.is_set()
            log.info("layer %s: background fetch done (%d bytes)", desc.digest[7:19], n)

    def stats_loop() -> None:
        while not stop.wait(1.0):
            publish()

    def on_term(signum: int, frame: object) -> None:
        stop.set()
        unmount(str(mountpoint))

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    publish()
    _write_state(state_dir, mountpoint=str(mountpoint), ready=True, layer=desc.digest)
    threading.Thread(target=fetch_loop, daemon=True, name="fetch").start()
    threading.Thread(target=stats_loop, daemon=True, name="stats").start()
    log.info("layer %s mounted at %s (%d entries)", desc.digest[7:19], mountpoint, fs.inode_count)
    server.serve()
    stop.set()
    fetcher.cache.flush()  # persist what is still queued for the disk cache
    if (state_dir / FREE_CACHE_MARKER).exists():
        freed = sum(fetcher.cache.remove(c.digest) for e in index.entries() for c in e.chunks)
        log.info("layer %s released: removed %d chunks from the cache", desc.digest[7:19], freed)
    publish()
    log.info("layer %s unmounted; exiting", desc.digest[7:19])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
