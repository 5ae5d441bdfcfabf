"""``ImageFS.read_bytes`` of cached files vs ``Path.read_bytes`` of the same files on local disk.

    python3 bench/bench_api.py [--big-mb 32] [--small 1000] [--runs 5]

An eStargz image (one big file, many 4 KiB files) is built in a local OCI layout, so the
first read measures decode + verify without a network. Then: reads with the chunks in the
process's memory cache, and reads in a fresh process where they come from the disk cache
(re-verified on load). Local files are read warm from the page cache. Best of --runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lazypull.convert.image import ConvertOptions, convert_image
from lazypull.imagefs import open_image
from lazypull.oci.layout import OCILayout
from tests.support.images import Entry, write_image


def build(work: Path, big_mb: int, small: int) -> tuple[str, Path]:
    big = os.urandom(big_mb << 20)
    files = {"data/big.bin": big} | {f"small/d{i // 100}/f{i}": os.urandom(4096) for i in range(small)}
    local = work / "local"
    for name, data in files.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
    write_image(work / "src", [[Entry(n, data=d) for n, d in files.items()]], gzip_level=1)
    convert_image(
        OCILayout.from_ref(f"oci:{work / 'src'}:latest"),
        OCILayout.from_ref(f"oci:{work / 'esgz'}:esgz", create=True),
        ConvertOptions(oci=True, compression_level=1),
        tag="esgz",
    )
    return f"oci:{work / 'esgz'}:esgz", local


def best(fn: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(ref: str, cache: str, big_mb: int, small: int, runs: int) -> dict[str, float]:
    """Seconds for: the big file, all small files; the first time and best of *runs* after."""
    names = [f"small/d{i // 100}/f{i}" for i in range(small)]
    with open_image(ref, cache_dir=cache) as img:
        t0 = time.perf_counter()
        img.read_bytes("data/big.bin")
        first_big = time.perf_counter() - t0
        t0 = time.perf_counter()
        for n in names:
            img.read_bytes(n)
        first_small = time.perf_counter() - t0
        big = best(lambda: img.read_bytes("data/big.bin"), runs)
        small_s = best(lambda: [img.read_bytes(n) for n in names], runs)
    return {"first_big": first_big, "first_small": first_small, "big": big, "small": small_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--big-mb", type=int, default=32)
    p.add_argument("--small", type=int, default=1000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--measure", nargs=2, metavar=("REF", "CACHE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:  # the fresh process: chunks only in the disk cache
        print(json.dumps(measure(*args.measure, args.big_mb, args.small, args.runs)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        work = Path(tmp)
        ref, local = build(work, args.big_mb, args.small)
        cache = str(work / "cache")
        warm = measure(ref, cache, args.big_mb, args.small, args.runs)
        cmd = [sys.executable, __file__, "--big-mb", str(args.big_mb), "--small", str(args.small)]
        fresh = json.loads(subprocess.run([*cmd, "--measure", ref, cache], capture_output=True, check=True).stdout)
        names = [local / f"small/d{i // 100}/f{i}" for i in range(args.small)]
        big_file = local / "data/big.bin"
        big_file.read_bytes()
        loc_big = best(big_file.read_bytes, args.runs)
        loc_small = best(lambda: [n.read_bytes() for n in names], args.runs)

    def row(what: str, big_s: float, small_s: float) -> str:
        return f"| {what} | {args.big_mb / big_s:,.0f} MB/s | {args.small / small_s:,.0f} files/s |"

    print(f"read_bytes: one {args.big_mb} MiB file, {args.small} files of 4 KiB (best of {args.runs})\n")
    print("| read | big file | small files |")
    print("|---|---|---|")
    print(row("local file (page cache)", loc_big, loc_small))
    print(row("ImageFS, chunks in memory", warm["big"], warm["small"]))
    print(row("ImageFS, fresh process, disk cache", fresh["first_big"], fresh["first_small"]))
    print(row("ImageFS, first read (local layout, decode + verify)", warm["first_big"], warm["first_small"]))


if __name__ == "__main__":
    main()
