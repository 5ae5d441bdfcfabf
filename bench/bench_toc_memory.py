"""Memory of an opened layer per TOC entry, the cost of building its compact index, and
the cost of refusing an oversized TOC.

    python3 bench/bench_toc_memory.py [--entries 1000,20000,100000] [--refuse 2000000]
                                      [--code DIR] [--modes objects,compact]

Each measurement runs in a fresh interpreter over a layer of files with realistic fields
(mode, owner names, modtime, a digest each, 100 per directory):

- ``objects``: the index and the filesystem tree as Python objects (``open_layer`` +
  ``LayerFS``; with ``--code`` pointing at an older checkout this is the old tree).
- ``compact``: what the layer server holds: ``open_layer``, the compact index written to a
  file and mapped, the Python index dropped, ``LayerFS`` over the mapped file.

Reported per layer: Python heap held (tracemalloc, after gc; also after a walk that lists
every directory and looks up every name, which fills the bounded caches), anonymous RSS
added per extra copy of the layer held in the same process (freed build memory is reused by
the next build, as in a server mounting layer after layer), the index file's size, build
times, and the time per readdir/lookup of that walk.
"""

from __future__ import annotations

import argparse
import gc
import json
import stat
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) * 1024


def _blob(n: int) -> bytes:
    from lazypull.format.gzipmember import compress_member
    from tests.support.hostile import CraftedLayer

    layer = CraftedLayer()
    member = compress_member(b"x" * 100, 6)
    for i in range(n):
        if i % 100 == 0:
            layer.add(name=f"usr/lib/python3/pkg{i // 100}/", type="dir", mode=0o755, userName="root")
        off = layer.member(member)
        d = f"sha256:{i:064x}"
        layer.add(
            name=f"usr/lib/python3/pkg{i // 100}/module_{i}.py",
            type="reg",
            size=100,
            modtime="2024-01-01T00:00:00Z",
            mode=0o644,
            userName="root",
            groupName="root",
            offset=off,
            digest=d,
            chunkDigest=d,
        )
    return layer.blob()[0]


def _refused_blob(n: int) -> bytes:
    from lazypull.format.gzipmember import compress_member
    from tests.support.hostile import blob_around_toc

    entries = ",".join(json.dumps({"name": f"{i:x}", "type": "dir"}, separators=(",", ":")) for i in range(n))
    return blob_around_toc(compress_member(b"\0" * 512, 6), ('{"version":1,"entries":[' + entries + "]}").encode())


class _Opener:
    """Opens one copy of the layer the way *mode* says; records its build times."""

    def __init__(self, blob: bytes, mode: str, workdir: Path) -> None:
        self.blob, self.mode, self.workdir = blob, mode, workdir
        self.copies = 0
        self.times: dict[str, float] = {}
        self.file_bytes = 0

    def open(self) -> object:
        from lazypull.format import BytesSource, open_layer
        from lazypull.fs.layer import LayerFS

        t0 = time.perf_counter()
        idx = open_layer(BytesSource(self.blob))
        t1 = time.perf_counter()
        if self.mode == "compact":
            from lazypull.format.compactwrite import write_file

            path = self.workdir / f"index.v1.{self.copies}"
            idx = write_file(idx, path)
            self.file_bytes = path.stat().st_size
        t2 = time.perf_counter()
        fs = LayerFS(idx, None)  # type: ignore[arg-type]
        t3 = time.perf_counter()
        self.copies += 1
        self.times = {"parse": t1 - t0, "compact": t2 - t1, "tree": t3 - t2}
        return fs


def _walk(fs: Any) -> tuple[float, int]:
    """List every directory and look up every name in it (what ``find`` or ``ls -R`` costs)."""
    t0 = time.perf_counter()
    ops, stack = 0, [1]
    while stack:
        ino = stack.pop()
        for name, attr in fs.readdir(ino):
            fs.lookup(ino, name)
            ops += 2
            if stat.S_ISDIR(attr.mode):
                stack.append(attr.ino)
    return time.perf_counter() - t0, ops


def child(path: str, n: int, mode: str, copies: int) -> None:
    blob = Path(path).read_bytes()
    if mode == "refuse":
        from lazypull.errors import FormatError
        from lazypull.format import BytesSource, open_layer

        before = _status("VmRSS:")
        t0 = time.perf_counter()
        try:
            open_layer(BytesSource(blob))
            outcome = "opened"
        except FormatError as e:
            outcome = f"refused: {e}"
        print(
            f"refuse {n:>9} entries ({len(blob) / 1e6:.1f} MB blob): {time.perf_counter() - t0:.2f} s, "
            f"peak RSS {_status('VmHWM:') / 2**20:.0f} MB (+{(_status('VmRSS:') - before) / 2**20:.0f}); {outcome}"
        )
        return
    with tempfile.TemporaryDirectory() as d:
        op = _Opener(blob, mode, Path(d))
        held = [op.open()]  # warm-up copy (imports, first arenas); its times are reported
        times = op.times
        gc.collect()
        rss1 = _status("RssAnon:")
        for _ in range(copies - 1):
            held.append(op.open())
        gc.collect()
        rss_each = (_status("RssAnon:") - rss1) / max(copies - 1, 1)
        walk_s, ops = _walk(held[0])
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        one = op.open()
        gc.collect()
        heap, peak = tracemalloc.get_traced_memory()
        _walk(one)  # every directory listed, every name looked up: the caches fill up to their bounds
        gc.collect()
        heap_walked = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del one, held
        print(
            json.dumps(
                {
                    "mode": mode,
                    "entries": n,
                    "heap_B_per_entry": round((heap - base) / n, 1),
                    "heap_bytes_per_layer": heap - base,
                    "heap_bytes_per_layer_after_walk": heap_walked - base,
                    "build_peak_heap_MB": round((peak - base) / 2**20, 1),
                    "rss_anon_B_per_entry": round(rss_each / n, 1),
                    "file_B_per_entry": round(op.file_bytes / n, 1),
                    "parse_ms": round(times["parse"] * 1000, 1),
                    "compact_ms": round(times["compact"] * 1000, 1),
                    "tree_ms": round(times["tree"] * 1000, 1),
                    "walk_us_per_op": round(walk_s / ops * 1e6, 2),
                }
            )
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", default="1000,20000,100000")
    ap.add_argument("--modes", default="objects,compact")
    ap.add_argument("--refuse", type=int, default=2_000_000, help="0: skip")
    ap.add_argument("--code", default=str(ROOT), help="the lazypull checkout to measure")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, args.code)
        child(args.child[0], int(args.child[1]), args.child[2], int(args.child[3]))
        return
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as d:
        jobs = [(n, m, _blob) for n in map(int, args.entries.split(",")) for m in args.modes.split(",")]
        if args.refuse:
            jobs.append((args.refuse, "refuse", _refused_blob))
        made: dict[int, Path] = {}
        for n, mode, make in jobs:
            path = made.get(n) if make is _blob else None
            if path is None:
                path = Path(d) / f"{n}-{mode}.blob"
                path.write_bytes(make(n))
                if make is _blob:
                    made[n] = path
            copies = max(2, min(20, 200_000 // n))
            cmd = [sys.executable, __file__, "--code", args.code, "--child", str(path), str(n), mode, str(copies)]
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
