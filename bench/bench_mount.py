"""How long a lazy layer mount takes in the layer server, and its first directory walk.

    PYTHONPATH=$PWD python3 bench/bench_mount.py [--entries 9000] [--layers 5] [--code DIR]

Builds *layers* distinct eStargz layers of *entries* small files each (a Debian base layer
has about 9,000), starts a layer server (``python -m lazypull.service.fsd``) from *code*
(default: this checkout), and mounts them one after the other from local blob files, so
the time is the server's own work (TOC read and verified, parsed, index built, FUSE
mount), the part of a lazy Prepare that is not the network. Then walks each mount once
(``os.walk`` + ``lstat``: what a container start touches first, and what waits for an
index still being built). Prints per-layer times and the medians.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layers(work: Path, entries: int, count: int) -> list[tuple[Path, dict[str, object]]]:
    from lazypull.format import build_estargz
    from lazypull.oci import mediatypes as mt
    from tests.support.images import Entry, make_tar

    out = []
    for k in range(count):
        files = [Entry(f"usr/share/pkg{i // 100}/file_{i}.txt", data=f"{k} {i}\n".encode()) for i in range(entries)]
        buf = io.BytesIO()
        res = build_estargz(io.BytesIO(make_tar(files)), buf, chunk_size=256 << 10)
        blob = buf.getvalue()
        path = work / f"layer{k}.blob"
        path.write_bytes(blob)
        desc = {
            "mediaType": mt.OCI_LAYER_GZIP,
            "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
            "size": len(blob),
            "annotations": {mt.ANNOTATION_TOC_DIGEST: res.toc_digest},
        }
        out.append((path, desc))
    return out


def _walk(mp: Path) -> int:
    n = 0
    for top, dirs, files in os.walk(mp):
        for name in dirs + files:
            os.lstat(os.path.join(top, name))
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=9000)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--code", default=str(ROOT), help="checkout whose layer server is measured")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from lazypull.fs.fsdclient import FsdClient, socket_path
    from lazypull.fs.spec import LayerSpec

    with tempfile.TemporaryDirectory(prefix="bench-mount-") as d:
        work = Path(d)
        layers = _layers(work, args.entries, args.layers)
        root = work / "fsd"
        env = {**os.environ, "PYTHONPATH": args.code}
        server = subprocess.Popen(
            [sys.executable, "-m", "lazypull.service.fsd", "--root", str(root)],
            env=env,
            cwd=work,  # `-m` puts the working directory first on the path: it would shadow --code
            stderr=subprocess.DEVNULL,
        )
        client = FsdClient(socket_path(root))
        try:
            deadline = time.monotonic() + 30
            while client.alive() is None:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the layer server did not start")
                time.sleep(0.05)
            mounts, walks = [], []
            for k, (blob, desc) in enumerate(layers):
                spec = LayerSpec(
                    layer=desc, cache_dir=str(work / "cache"), blob_path=str(blob), prefetch=False,
                    background_fetch=False,
                )  # type: ignore[arg-type]  # fmt: skip
                mp = work / f"m{k}"
                t0 = time.perf_counter()
                _, fd = client.mount(spec.to_json(), mp, timeout=60)
                t1 = time.perf_counter()
                os.close(fd)
                n = _walk(mp)
                t2 = time.perf_counter()
                mounts.append(t1 - t0)
                walks.append(t2 - t1)
                ms = (1000 * (t1 - t0), 1000 * (t2 - t1))
                print(f"layer {k}: mount {ms[0]:6.1f} ms, then a walk of {n} entries {ms[1]:6.1f} ms")
            print(
                json.dumps(
                    {
                        "code": args.code,
                        "entries": args.entries,
                        "mount_ms_median": round(1000 * statistics.median(mounts), 1),
                        "walk_ms_median": round(1000 * statistics.median(walks), 1),
                        "mount_plus_walk_ms_median": round(
                            1000 * statistics.median(m + w for m, w in zip(mounts, walks, strict=True)), 1
                        ),
                    }
                )
            )
            client.shutdown(unmount_all=True)
            server.wait(30)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()


if __name__ == "__main__":
    main()
