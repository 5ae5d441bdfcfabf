"""What a lazy Prepare spends on one large layer's TOC, without the network: inflate, digest,
decode and validate it into the index, and the collection that follows.

    python3 bench/bench_toc_build.py [--files 30000] [--runs 15] [--code DIR]

The layer is small-files' (``lazypull bench``): a node_modules-like tree of small files
archived as ``tar -C dir .`` writes it (names like ``./app/...``), converted with this
checkout's writer. Each run opens it with ``open_estargz`` from the blob in memory, then
times one collection of the two young generations (what the interpreter runs next
anyway: the objects the build left tracked). With ``--code`` the opening runs against an
older checkout (same blob), for a before/after in one sitting. Prints medians and minima.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = """
import gc, json, statistics, sys, time
from lazypull.format import BytesSource
from lazypull.format.estargz_reader import open_estargz
blob = open(sys.argv[1], "rb").read()
ballast = [{"k": [i]} for i in range(200_000)]  # a server's heap: collections have work
opens, collects = [], []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    index = open_estargz(BytesSource(blob))
    t1 = time.perf_counter()
    gc.collect(1)
    t2 = time.perf_counter()
    opens.append(t1 - t0)
    collects.append(t2 - t1)
    del index
ms = lambda xs: {"median_ms": round(1e3 * statistics.median(xs), 1), "min_ms": round(1e3 * min(xs), 1)}
print(json.dumps({"entries": len(open_estargz(BytesSource(blob))), "open": ms(opens), "collect": ms(collects)}))
"""


def small_files_tar(n: int) -> bytes:
    rnd = random.Random(2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dirs: set[str] = set()
        for i in range(n):
            d = f"./app/node_modules/pkg-{i // 10}"
            for p in ("./app", "./app/node_modules", d):
                if p not in dirs:
                    dirs.add(p)
                    ti = tarfile.TarInfo(p + "/")
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                    tf.addfile(ti)
            data = (f"// package {i}\nmodule.exports = {rnd.random()!r};\n" * rnd.randint(1, 40)).encode()
            ti = tarfile.TarInfo(f"{d}/{'index.js' if i % 10 == 0 else f'lib-{i % 10}.js'}")
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=30_000)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose reader is measured")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from lazypull.format import build_estargz

    with tempfile.TemporaryDirectory() as tmp:
        blob = Path(tmp) / "layer"
        out = io.BytesIO()
        build_estargz(io.BytesIO(small_files_tar(args.files)), out)
        blob.write_bytes(out.getvalue())
        env = {**os.environ, "PYTHONPATH": str(args.code.resolve())}
        res = subprocess.run(
            [sys.executable, "-c", MEASURE, str(blob), str(args.runs)],
            env=env,
            cwd=tmp,  # not this checkout: `-c` puts the working directory first on the path
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(res.stdout)
        result["code"] = str(args.code)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
