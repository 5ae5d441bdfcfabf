"""Pods of images that share layers, started while others are removed: the layer lifecycle
under the concurrency of a busy node, through containerd, runc and the real daemon.

Three eStargz images of eight layers share their first four (busybox and three token
layers); every token layer holds one file whose bytes only that layer has. Workers pull
(``ctr-remote image rpull``), run (``ctr run``: ``cat`` of every token file, compared with
what the image must show) and remove (``ctr image rm --sync``, so containerd's collector
removes the snapshots) images at random, each image used by at most two runs at once and
never removed while in use. With faults, the layer server is killed (``kill -9``) and the
daemon restarted at random moments: a start may then fail with an error containerd
reports, but a container never runs on a tree that misses a layer's files.

By hand: ``make stress`` (10,000 operations), or
``python -m tests.support.stress --ops 500 --faults``.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

IMAGES = 3
SHARED_TOKENS = 3  # shared layers: busybox + these
OWN_TOKENS = 4
REMOTE = "ctr-remote"


@dataclass
class ImageState:
    ref: str
    tokens: set[str]
    present: bool = False
    runs: int = 0
    busy: bool = False  # a pull or a removal in progress


@dataclass
class Outcome:
    ops: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)  # a container saw a wrong or partial tree: never allowed
    failed: list[str] = field(default_factory=list)  # an operation failed with an error (allowed only with faults)

    def line(self) -> str:
        done = ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items()))
        return f"{sum(self.ops.values())} operations ({done}); {len(self.failed)} failed, {len(self.wrong)} wrong"


def build_images(root: Path, registry_host: str) -> list[ImageState]:
    """The images, converted to eStargz by lazypull and pushed to the registry."""
    from lazypull.cli.main import main
    from tests.support.images import Entry, busybox_layer, write_image

    def token_layer(name: str) -> tuple[list[Entry], str]:
        token = f"{name}:{secrets.token_hex(8)}"
        return [Entry("layers", "dir", mode=0o755), Entry(f"layers/{name}.txt", data=token.encode() + b"\n")], token

    shared = [token_layer(f"shared{i}") for i in range(SHARED_TOKENS)]
    out = []
    for n in range(IMAGES):
        own = [token_layer(f"img{n}-own{i}") for i in range(OWN_TOKENS)]
        layers = [busybox_layer(), *(entries for entries, _ in shared), *(entries for entries, _ in own)]
        src = root / f"src{n}"
        write_image(src, layers, cmd=["/bin/sh"])
        plain = f"{registry_host}/stress/img{n}:orig"
        ref = f"{registry_host}/stress/img{n}:esgz"
        copy = ["copy", "--plain-http", f"oci:{src}:latest", plain]
        for argv in (copy, ["convert", "--plain-http", "--oci", plain, ref]):
            if main(argv) != 0:
                raise RuntimeError(f"lazypull {' '.join(argv)} failed")
        out.append(ImageState(ref, {t for _, t in shared} | {t for _, t in own}))
    return out


class Stress:
    def __init__(
        self, cd: object, daemon: object, images: list[ImageState], *, seed: int, faults: bool, outdir: Path
    ) -> None:
        self.cd, self.daemon, self.images = cd, daemon, images
        self.outdir = outdir  # what each container saw, one file per container
        outdir.mkdir(parents=True, exist_ok=True)
        self.faults = faults
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.out = Outcome()
        self.names = iter(range(1 << 30))
        self.budget = 0

    def _ctr(self, *args: str, tool: str = "ctr", timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.cd.ctr(*args, tool=tool, timeout=timeout, check=False)  # type: ignore[attr-defined,no-any-return]

    def _pick(self) -> tuple[str, ImageState] | None:
        """An operation its image allows now (claimed under the lock), or None."""
        with self.lock:
            if self.budget <= 0:
                return None
            choices: list[tuple[str, ImageState]] = []
            for im in self.images:
                if im.busy:
                    continue
                if not im.present:
                    choices.append(("pull", im))
                else:
                    if im.runs < 2:
                        choices += [("run", im)] * 3
                    if im.runs == 0:
                        choices.append(("remove", im))
            if not choices:
                return ("wait", self.images[0])
            op, im = self.rng.choice(choices)
            self.budget -= 1
            if op == "run":
                im.runs += 1
            else:
                im.busy = True
            return op, im

    def _finish(self, op: str, im: ImageState, ok: bool, detail: str) -> None:
        with self.lock:
            self.out.ops[op] += 1
            if op == "run":
                im.runs -= 1
            else:
                im.busy = False
                if ok:
                    im.present = op == "pull"
            if not ok:
                self.out.failed.append(f"{op} {im.ref}: {detail[-600:]}")

    def _run(self, im: ImageState) -> tuple[bool, str]:
        cid = f"stress-{next(self.names)}"
        # The container writes what it sees to a file (ctr's own output copy can lose the tail
        # of a short-lived container's output).
        out = self.outdir / cid
        mount = f"type=bind,src={self.outdir},dst=/out,options=rbind:rw"
        script = f"cat /layers/*.txt > /out/{cid}.tmp && busybox mv /out/{cid}.tmp /out/{cid}"
        argv = ["run", "--rm", "--snapshotter", "lazypull", "--mount", mount, im.ref, cid, "/bin/sh", "-c", script]
        res = self._ctr(*argv)
        if res.returncode != 0 or not out.exists():
            return False, f"exit {res.returncode}: {res.stderr}{res.stdout}"
        seen = {line for line in out.read_text().splitlines() if line}
        out.unlink()
        if seen != im.tokens:
            missing = sorted(im.tokens - seen)
            extra = sorted(seen - im.tokens)
            with self.lock:
                self.out.wrong.append(f"{cid} of {im.ref}: missing {missing}, unexpected {extra}")
        return True, ""

    def worker(self) -> None:
        while True:
            picked = self._pick()
            if picked is None:
                return
            op, im = picked
            if op == "wait":
                time.sleep(0.05)
                continue
            if op == "pull":
                res = self._ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", im.ref, tool=REMOTE)
                ok, detail = res.returncode == 0, res.stderr + res.stdout
            elif op == "run":
                ok, detail = self._run(im)
            else:
                res = self._ctr("image", "rm", "--sync", im.ref)
                ok, detail = res.returncode == 0, res.stderr + res.stdout
                if not ok and "not found" in detail:
                    ok = True  # gone already (a failed pull may leave no image)
            self._finish(op, im, ok, detail)
            if not ok:
                time.sleep(0.5)  # a daemon coming back: do not spend the operations on its start-up

    def chaos(self, stop: threading.Event) -> None:
        """kill -9 of the layer server, or a daemon restart, every few seconds."""
        while not stop.wait(self.rng.uniform(2.0, 6.0)):
            with self.lock:
                self.out.ops["fault"] += 1
            if self.rng.random() < 0.5:
                for pid in self.daemon.server_processes():  # type: ignore[attr-defined]
                    os.kill(pid, signal.SIGKILL)
            else:
                self.daemon.stop(signal.SIGKILL)  # type: ignore[attr-defined]
                self.daemon.start()  # type: ignore[attr-defined]

    def run(self, ops: int, workers: int = 4) -> Outcome:
        self.budget = ops
        stop = threading.Event()
        threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(workers)]
        chaos = threading.Thread(target=self.chaos, args=(stop,), daemon=True) if self.faults else None
        for t in threads:
            t.start()
        if chaos is not None:
            chaos.start()
        for t in threads:
            t.join()
        stop.set()
        if chaos is not None:
            chaos.join()
        return self.out

    def remove_all(self) -> None:
        for im in self.images:
            self._ctr("image", "rm", "--sync", im.ref)
            im.present = False


def main(argv: list[str] | None = None) -> int:
    from tests.support.containerd import start_containerd
    from tests.support.daemon import start_daemon
    from tests.support.registry import start_registry

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--faults", action="store_true", help="kill the layer server and restart the daemon at random")
    p.add_argument("--seed", type=int, default=int(time.time()))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lazypull-stress-") as tmp:
        root = Path(tmp)
        reg = start_registry(root / "registry")
        daemon = start_daemon(root / "daemon", f'plain_http_hosts = ["{reg.host}"]\n')
        cd = start_containerd(root / "containerd", proxy_plugins={"lazypull": daemon.address})
        try:
            images = build_images(root, reg.host)
            t0 = time.monotonic()
            s = Stress(cd, daemon, images, seed=args.seed, faults=args.faults, outdir=root / "seen")
            out = s.run(args.ops, args.workers)
            took = time.monotonic() - t0
            s.remove_all()
            print(f"seed {args.seed}: {out.line()} in {took:.0f}s")
            for w in out.wrong[:20]:
                print("WRONG", w)
            for f in out.failed[:20]:
                print("FAILED", f)
            return 1 if out.wrong or (out.failed and not args.faults) else 0
        finally:
            cd.stop()
            daemon.stop()
            daemon.stop_layers()
            reg.stop()


if __name__ == "__main__":
    sys.exit(main())
