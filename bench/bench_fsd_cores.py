"""Does the GIL limit the layer server? Cold reads (local blob, so inflate + verify + FUSE are
all the work) of one file, then of two files of two layers at once: both layers in one layer
server, and each layer in its own server process. Medians of 3.

    PYTHONPATH=$PWD python3 -m bench.bench_fsd_cores --mib 96
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from lazypull.fs.fsdclient import FsdClient, socket_path, start_server
from lazypull.fs.spec import LayerSpec
from tests.service.test_fsd import make_layer


def text(seed: int, size: int) -> bytes:
    r = random.Random(seed)
    words = [bytes(r.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(2, 9))) for _ in range(5000)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(r.choice(words) for _ in range(2000)) + b"\n"
    return bytes(out[:size])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=96)
    size = ap.parse_args().mib << 20
    tmp = Path(tempfile.mkdtemp(prefix="lazypull-cores-"))
    layers = [make_layer(tmp, f"L{i}", {f"big{i}.txt": text(i, size)}) for i in range(2)]

    def mount(root: Path, i: int) -> tuple[FsdClient, Path]:
        c, _ = start_server(root, socket_path(root), log_path=root / "log", memory_bytes=1 << 20)
        blob, desc = layers[i]
        n = time.time_ns()
        spec = LayerSpec(
            layer=desc, cache_dir=str(tmp / f"cache-{n}"), blob_path=str(blob), prefetch=False, background_fetch=False
        )
        mp = tmp / f"m-{i}-{n}"
        _, fd = c.mount(spec.to_json(), mp, timeout=60)
        os.close(fd)
        return c, mp

    def cold(roots: list[Path]) -> float:
        ms = [mount(root, i) for i, root in enumerate(roots)]
        t0 = time.monotonic()
        ps = [
            subprocess.Popen(["sh", "-c", f"test $(cat {mp}/big{i}.txt | wc -c) = {size}"])
            for i, (_, mp) in enumerate(ms)
        ]
        assert all(p.wait() == 0 for p in ps)
        t = time.monotonic() - t0
        for c, mp in ms:
            c.unmount(mp)
        return t

    one, a, b = tmp / "one", tmp / "a", tmp / "b"
    res: dict[str, list[float]] = {"one_layer": [], "two_layers_one_server": [], "two_layers_two_servers": []}
    try:
        for _ in range(3):
            res["one_layer"].append(cold([one]))
            res["two_layers_one_server"].append(cold([one, one]))
            res["two_layers_two_servers"].append(cold([a, b]))
    finally:
        for r in (one, a, b):
            FsdClient(socket_path(r)).shutdown(unmount_all=True)
    print({k: round(statistics.median(v), 3) for k, v in res.items()}, f"{size >> 20} MiB per file")


if __name__ == "__main__":
    main()
