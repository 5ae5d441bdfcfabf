"""Memory of an opened layer index per TOC entry, and the cost of refusing an oversized TOC.

    python3 bench/bench_toc_memory.py [--entries 1000,100000] [--refuse 2000000]

Each measurement runs in a fresh interpreter: the resident memory held by the index
after ``open_layer`` (files with realistic fields: mode, owner names, modtime, a digest
each, 100 per directory), and the time and peak RSS of refusing a TOC of --refuse
minimal entries (over the default ``max_entries``).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


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


def child(path: str, n: int) -> None:
    from lazypull.errors import FormatError
    from lazypull.format import BytesSource, open_layer

    blob = Path(path).read_bytes()
    gc.collect()
    before = _status("VmRSS:")
    t0 = time.perf_counter()
    try:
        idx = open_layer(BytesSource(blob))
        outcome = f"{len(idx)} index entries"  # type: ignore[arg-type]
    except FormatError as e:
        outcome = f"refused: {e}"
    dt = time.perf_counter() - t0
    gc.collect()
    held = _status("VmRSS:") - before
    print(
        f"{n:>9} entries ({len(blob) / 1e6:.1f} MB blob): {dt:.2f} s, {held / 1024:.1f} MB held "
        f"({held * 1024 / n:.0f} B/entry), peak RSS {_status('VmHWM:') / 1024:.0f} MB; {outcome}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", default="1000,100000")
    ap.add_argument("--refuse", type=int, default=2_000_000)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    with tempfile.TemporaryDirectory() as d:
        jobs = [(n, _blob) for n in map(int, args.entries.split(","))] + [(args.refuse, _refused_blob)]
        for n, make in jobs:
            path = Path(d) / f"{n}.blob"
            path.write_bytes(make(n))
            subprocess.run([sys.executable, __file__, "--child", str(path), str(n)], check=True)


if __name__ == "__main__":
    main()
