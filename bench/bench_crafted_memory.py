"""The layer server's memory under a crafted image: many layers whose TOCs declare 250k
entries each (under 1 MB of blob per layer), mounted together, then unmounted, in rounds.

    python3 bench/bench_crafted_memory.py [--layers 24] [--entries 250000] [--rounds 3]
                                          [--budget-mb 0] [--image-mb 0] [--other-files 400]

A real ``lazypull-fsd`` process (this checkout's) serves the layers from local blob files;
every layer of a round is mounted at once (one thread each, as containerd prepares an
image's layers). Reported per round: the server's RSS after mounting and after unmounting,
its peak (VmHWM), how many mounts were refused by the memory budget, and the slowest of the
reads that another image's layer (mounted first) answered meanwhile, and how many failed. The
baseline is the server's RSS once that layer's files were each read once (the memory tier
holds them; ``--other-files`` sets its size, 64 KiB each). ``--budget-mb`` and ``--image-mb``
pass the server's node-wide index budget and per-image limit (0: the server's defaults).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lazypull.fs.fsdclient import FsdClient, socket_path  # noqa: E402
from lazypull.fs.spec import LayerSpec  # noqa: E402
from tests.service.test_fsd import make_layer  # noqa: E402
from tests.support.hostile import wide_layer, write_blob  # noqa: E402


def crafted_blob(where: Path, i: int, entries: int) -> tuple[Path, dict[str, object]]:
    """A layer whose TOC lists *entries* empty files (distinct per layer, so no index is shared)."""
    return write_blob(where, f"layer{i}", wide_layer(entries, str(i)))


def rss(pid: int) -> tuple[int, int, int]:
    """(VmRSS, VmHWM, RssFile: mapped index files, which the kernel may drop) of *pid* in bytes."""
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssFile"):
            vals[k] = int(v.split()[0]) * 1024
    return vals["VmRSS"], vals["VmHWM"], vals["RssFile"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--entries", type=int, default=250_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget-mb", type=int, default=0)
    p.add_argument("--image-mb", type=int, default=0)
    p.add_argument(
        "--other-files", type=int, default=400, help="64 KiB files of the unrelated layer (kept by the memory cache)"
    )
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="crafted-mem-") as d:
        tmp = Path(d)
        t0 = time.monotonic()
        blobs = [crafted_blob(tmp, i, a.entries) for i in range(a.layers)]
        total = sum(b.stat().st_size for b, _ in blobs)
        print(f"{a.layers} layers x {a.entries} entries: {total / 1e6:.1f} MB of blobs ({time.monotonic() - t0:.0f} s)")
        root = tmp / "fsd"
        root.mkdir()
        cmd = [sys.executable, "-m", "lazypull.service.fsd", "--root", str(root), "--log-level", "warning"]
        if a.budget_mb:
            cmd += ["--index-memory-bytes", str(a.budget_mb << 20)]
        if a.image_mb:
            cmd += ["--image-memory-bytes", str(a.image_mb << 20)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        srv = subprocess.Popen(cmd, env=env, start_new_session=True)
        try:
            client = FsdClient(socket_path(root))
            deadline = time.monotonic() + 30
            while client.alive() is None:
                if time.monotonic() > deadline:
                    raise SystemExit("the layer server did not start")
                time.sleep(0.05)
            print(f"start: RSS {rss(srv.pid)[0] / 1e6:.0f} MB")
            # An unrelated running container's layer (another image), read all the time.
            other_dir = tmp / "other"
            other_dir.mkdir()
            files = {f"f{i}.bin": os.urandom(64 << 10) for i in range(a.other_files)}
            oblob, odesc = make_layer(other_dir, "other", files)
            ospec = LayerSpec(
                layer=odesc,
                cache_dir=str(tmp / "cache"),
                blob_path=str(oblob),
                ref="other/image",
                prefetch=False,
                background_fetch=False,
            )
            _, fd = client.mount(ospec.to_json(), tmp / "other-m", timeout=60)
            os.close(fd)
            stalls: list[float] = []
            failures: list[str] = []
            stop = threading.Event()
            read_once = threading.Event()

            def reader() -> None:
                names = list(files)
                i = 0
                while not stop.is_set():
                    n = names[i % len(names)]  # the first pass is uncached, later ones cached
                    i += 1
                    if i == len(names):
                        read_once.set()
                    t = time.monotonic()
                    try:
                        os.stat(tmp / "other-m" / n)
                        ok = (tmp / "other-m" / n).read_bytes() == files[n]
                    except OSError as e:
                        ok = False
                        failures.append(str(e))
                    stalls.append(time.monotonic() - t)
                    if not ok and not failures:
                        failures.append(f"{n}: wrong bytes")
                    time.sleep(0.01)

            rt = threading.Thread(target=reader, daemon=True)
            rt.start()
            read_once.wait(120)
            time.sleep(1)
            base = rss(srv.pid)[0]
            print(
                f"with the other layer mounted and each of its files read once (the baseline): RSS {base / 1e6:.0f} MB"
            )
            afters: list[int] = []
            for r in range(a.rounds):
                stalls.clear()
                refused: list[str] = []
                mps = []

                def mount(
                    i: int, blob: Path, desc: dict[str, object], refused: list[str] = refused, mps: list[Path] = mps
                ) -> None:
                    mp = tmp / f"m{i}"
                    s = LayerSpec(
                        layer=desc,
                        cache_dir=str(tmp / "cache"),
                        blob_path=str(blob),
                        ref="crafted/image",
                        prefetch=False,
                        background_fetch=False,
                    )
                    try:
                        _, fd = client.mount(s.to_json(), mp, timeout=600)
                        os.close(fd)
                        mps.append(mp)
                    except Exception as e:  # refused: report the first line
                        refused.append(str(e).splitlines()[0])

                t0 = time.monotonic()
                ts = [threading.Thread(target=mount, args=(i, b, desc)) for i, (b, desc) in enumerate(blobs)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
                for mp in mps:
                    os.listdir(mp / "d")[:1]  # served (waits for its index)
                took = time.monotonic() - t0
                mounted, peak, mapped = rss(srv.pid)
                im = client.stats().get("index_memory") or {"peak": 0, "budget": 0}
                for mp in mps:
                    client.unmount(mp, free_cache=True)
                time.sleep(1)
                after, peak, _ = rss(srv.pid)
                afters.append(after)
                print(
                    f"round {r + 1}: {len(mps)} mounted in {took:.1f} s, RSS {mounted / 1e6:.0f} MB mounted "
                    f"({mapped / 1e6:.0f} MB of it mapped files), "
                    f"{after / 1e6:.0f} MB after unmount, peak {peak / 1e6:.0f} MB; index memory peak "
                    f"{im['peak'] / 1e6:.0f} of {im['budget'] / 1e6:.0f} MB; {len(refused)} refused"
                    + (f" ({refused[0]})" if refused else "")
                )
                print(
                    f"  the unrelated layer meanwhile: {len(stalls)} reads, slowest {max(stalls, default=0):.3f} s, "
                    f"{len(failures)} failed"
                )
            if afters:
                print(
                    f"after {len(afters)} rounds: RSS {afters[-1] / 1e6:.0f} MB, "
                    f"{100 * (afters[-1] - base) / base:+.0f}% of the baseline "
                    f"(highest after a round: {max(afters) / 1e6:.0f} MB)"
                )
            stop.set()
            rt.join(10)
            client.unmount(tmp / "other-m", free_cache=True)
        finally:
            os.killpg(srv.pid, signal.SIGTERM)
            srv.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
