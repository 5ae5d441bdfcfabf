"""The lazy filesystem of one layer, measured: mount time vs entries, read throughput,
small-file rate, compared with the same files on the local disk (ext4).

    python3 bench/bench_layer.py [--entries 1000,10000,100000] [--big-mb 256] [--small 10000]

Blobs are local files (no network), so this measures TOC parsing, tree building, the
FUSE server and chunk decode/verify. Needs root (FUSE mounts).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lazypull.cache.chunks import ChunkCache
from lazypull.format import FileSource, build_estargz, open_layer
from lazypull.fs.fetcher import Fetcher
from lazypull.fs.fuse.loop import ServeLoop
from lazypull.fs.fuse.server import FuseSession, unmount
from lazypull.fs.layer import LayerFS

LOOP = ServeLoop()  # serves every mount of this run, as the layer server's does its layers


def make_layer(work: Path, files: dict[str, bytes], name: str) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dirs = set()
        for p, data in files.items():
            d = os.path.dirname(p)
            if d and d not in dirs:
                dirs.add(d)
                ti = tarfile.TarInfo(d)
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                tf.addfile(ti)
            ti = tarfile.TarInfo(p)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    out = work / f"{name}.blob"
    with open(out, "wb") as f:
        build_estargz(io.BytesIO(buf.getvalue()), f, compression_level=1)
    return out


def mount(blob: Path, mnt: Path, cache: Path, passthrough: bool = False) -> tuple[FuseSession, float, float]:
    """Serve *blob* at *mnt* as the layer server does: its session on the shared serve loop."""
    t0 = time.perf_counter()
    src = FileSource(blob)
    idx = open_layer(src)
    fs = LayerFS(idx, Fetcher(idx, src, ChunkCache(cache)))
    t_tree = time.perf_counter() - t0
    mnt.mkdir(exist_ok=True)
    session = FuseSession(fs, str(mnt), passthrough=passthrough)
    session.mount()
    LOOP.add(session)
    os.listdir(mnt)
    return session, t_tree, time.perf_counter() - t0


def umount(session: FuseSession) -> None:
    LOOP.remove(session)
    unmount(session.mountpoint)
    session.close()
    if session.root is not None:
        session.root.close()


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


def read_small(path: Path) -> None:
    """open+read+close as `cat` does (Python's open() would add an isatty ioctl per file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, 65536):
            pass
    finally:
        os.close(fd)


def read_all(path: Path) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            n += len(chunk)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", default="1000,10000,100000")
    ap.add_argument("--big-mb", type=int, default=256)
    ap.add_argument("--small", type=int, default=10000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-layer-"))
    try:
        print(f"{'entries':>8} {'tree s':>8} {'mount+readdir s':>16} {'+RSS MB':>8}")
        for n in [int(x) for x in args.entries.split(",")]:
            blob = make_layer(work, {f"d{i // 1000}/f{i}": b"x" * 10 for i in range(n)}, f"n{n}")
            rss0 = rss_mb()
            session, t_tree, t_mount = mount(blob, work / f"m{n}", work / f"c{n}")
            rss = rss_mb() - rss0
            print(f"{n:8d} {t_tree:8.3f} {t_mount:16.3f} {rss:8.0f}")
            umount(session)

        big = os.urandom(args.big_mb << 20)  # unique chunks: no dedup in the chunk cache
        small = {f"s/{i // 100}/f{i}.txt": os.urandom(2048) for i in range(args.small)}
        blob = make_layer(work, {"big.bin": big, **small}, "data")
        native = work / "native"
        for p, data in {"big.bin": big, **small}.items():
            (native / p).parent.mkdir(parents=True, exist_ok=True)
            (native / p).write_bytes(data)
        session, _, _ = mount(blob, work / "mnt", work / "cache")
        pt_session, _, _ = mount(blob, work / "mnt-pt", work / "cache-pt", passthrough=True)
        mnt = work / "mnt"
        rows = []
        for label, root in (("ext4", native), ("lazypull", mnt), ("+passthru", work / "mnt-pt")):
            drop_caches()
            t0 = time.perf_counter()
            f = open(root / "big.bin", "rb", buffering=0)  # noqa: SIM115
            f.read(1)
            first = time.perf_counter() - t0
            f.close()
            drop_caches()
            t0 = time.perf_counter()
            read_all(root / "big.bin")
            cold = args.big_mb / (time.perf_counter() - t0)
            read_all(root / "big.bin")  # the first warm open may assemble the passthrough file
            t0 = time.perf_counter()
            read_all(root / "big.bin")
            warm = args.big_mb / (time.perf_counter() - t0)
            names = list(small)
            drop_caches()
            t0 = time.perf_counter()
            for p in names:
                read_small(root / p)
            small_cold = len(names) / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            for p in names:
                read_small(root / p)
            small_warm = len(names) / (time.perf_counter() - t0)
            rows.append((label, first * 1000, cold, warm, small_cold, small_warm))
        print(
            f"\n{'':10} {'first byte ms':>14} {'seq cold MB/s':>14} {'seq warm MB/s':>14} "
            f"{'small cold f/s':>15} {'small warm f/s':>15}"
        )
        for r in rows:
            print(f"{r[0]:10} {r[1]:14.2f} {r[2]:14.0f} {r[3]:14.0f} {r[4]:15.0f} {r[5]:15.0f}")
        print(
            "(cold = chunk cache empty, page cache dropped: fetch from the local blob + inflate + sha256 verify;"
            " warm = third read)"
        )
        pt = pt_session.passthrough_active
        print(
            f"(+passthru: FUSE passthrough {'active' if pt else 'NOT offered by this kernel'}; "
            "cached files are read by the kernel from the cache file, but every open is a round trip)"
        )
        umount(session)
        umount(pt_session)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
