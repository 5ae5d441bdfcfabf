"""Registry client speed on a loopback registry, next to curl doing the same requests.

    python3 bench/bench_registry.py [--blob-mb 256] [--ranges 2000] [--range-size 65536]

Measures one large blob GET (MB/s) and many small Range GETs (requests/s, p50/p99).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor
from lazypull.registry.blobsource import RegistryBlobSource
from lazypull.registry.client import RegistryClient
from lazypull.registry.options import RegistryOptions
from lazypull.registry.reference import Reference
from tests.support.registry import start_registry


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blob-mb", type=int, default=256)
    ap.add_argument("--ranges", type=int, default=2000)
    ap.add_argument("--range-size", type=int, default=65536)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    reg = start_registry(work / "reg")
    try:
        client = RegistryClient(RegistryOptions(plain_http=True))
        ref = Reference.parse(f"{reg.host}/bench/blob:x")
        data = os.urandom(1 << 20) * args.blob_mb
        d = Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(data), len(data))
        client.push_blob(ref, d, io.BytesIO(data))
        url = f"{reg.url}/v2/bench/blob/blobs/{d.digest}"
        src = RegistryBlobSource(client, ref, d)
        src.read_at(0, 10)  # warm the connection
        t0 = time.perf_counter()
        with client.open_blob(ref, d) as f:
            while f.read(1 << 20):
                pass
        ours_mbs = args.blob_mb / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        subprocess.run(["curl", "-s", "-o", "/dev/null", url], check=True)
        curl_mbs = args.blob_mb / (time.perf_counter() - t0)
        offsets = [(i * 7919 * 4096) % (len(data) - args.range_size) for i in range(args.ranges)]
        lat = []
        t0 = time.perf_counter()
        for off in offsets:
            t = time.perf_counter()
            src.read_at(off, args.range_size)
            lat.append(time.perf_counter() - t)
        ours_rps = args.ranges / (time.perf_counter() - t0)
        # curl: the same requests in one process over one keep-alive connection (a config with `next`).
        cfg = work / "curl.cfg"
        cfg.write_text(
            "next\n".join(
                f'url = "{url}"\noutput = "/dev/null"\nheader = "Range: bytes={o}-{o + args.range_size - 1}"\n'
                for o in offsets
            )
        )
        t0 = time.perf_counter()
        subprocess.run(["curl", "-s", "-K", str(cfg)], check=True)
        curl_rps = len(offsets) / (time.perf_counter() - t0)
        print(f"large GET ({args.blob_mb} MiB): lazypull {ours_mbs:.0f} MB/s, curl {curl_mbs:.0f} MB/s")
        print(
            f"{args.ranges} Range GETs of {args.range_size} B: lazypull {ours_rps:.0f} req/s "
            f"(p50 {statistics.median(lat) * 1000:.2f} ms, p99 {pct(lat, 0.99) * 1000:.2f} ms); "
            f"curl (one process, keep-alive): {curl_rps:.0f} req/s"
        )
    finally:
        reg.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
