"""Conversion throughput and size: lazypull convert vs ctr-remote image convert, same image.

Builds an image from real system files (a slice of /usr) plus random base64 text,
converts it with both tools at the same gzip level and chunk size, and prints MB/s
(uncompressed input per second of conversion) and the output size ratio.

    python3 bench/bench_convert.py [--mb 300] [--level 9]          # one layer, local
    python3 bench/bench_convert.py --registry [--layers 3]          # registry to registry

With ``--registry`` the image has several layers and sits in a loopback registry:
``ctr-remote image pull`` + ``image convert`` + ``image push`` against ``lazypull
convert REG/src REG/dst`` (which streams layers and converts them in parallel).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lazypull.convert.copy import copy_image
from lazypull.convert.image import ConvertOptions, convert_image
from lazypull.oci.layout import OCILayout
from lazypull.oci.store import ImageStore
from lazypull.oci.types import Index, Manifest, host_platform, is_index
from lazypull.registry.options import RegistryOptions
from lazypull.registry.stores import open_store
from tests.e2e.interop import export_layout, import_layout
from tests.support.containerd import start_containerd
from tests.support.images import write_image
from tests.support.registry import start_registry


def make_tar(mb: int, seed: int = 42, system_files: bool = True) -> bytes:
    """Half system files (binaries, libraries, text), half random base64 text."""
    buf = io.BytesIO()
    budget = mb << 20
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        used = 0
        for root in (
            ()
            if not system_files
            else ("/usr/lib/python3.11", "/usr/share/perl", "/usr/bin", "/usr/lib/x86_64-linux-gnu")
        ):
            for dirpath, _dirs, files in os.walk(root):
                for f in sorted(files):
                    p = os.path.join(dirpath, f)
                    if not os.path.isfile(p) or os.path.islink(p):
                        continue
                    size = os.path.getsize(p)
                    if used + size > budget // 2:
                        break
                    tf.add(p, arcname=p.lstrip("/"), recursive=False)
                    used += size
        rnd = random.Random(seed)
        i = 0
        while used < budget:
            data = base64.b64encode(rnd.randbytes(min(12 << 20, budget - used)))
            ti = tarfile.TarInfo(f"data/random-{seed}-{i}.b64")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
            used += len(data)
            i += 1
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=300, help="uncompressed image size in MiB")
    ap.add_argument("--level", type=int, default=9)
    ap.add_argument("--chunk-size", type=int, default=4 << 20)
    ap.add_argument("--registry", action="store_true", help="registry to registry, several layers")
    ap.add_argument("--layers", type=int, default=3, help="layers of the --registry image")
    args = ap.parse_args()
    if args.registry:
        registry_run(args)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    tar = make_tar(args.mb)
    mib = len(tar) / (1 << 20)
    write_image(work / "src", [tar])
    cd = start_containerd(work / "containerd")
    try:
        import_layout(cd, work / "src", "bench.local/conv")
        t0 = time.perf_counter()
        cd.ctr(
            "image",
            "convert",
            "--estargz",
            "--oci",
            "--estargz-compression-level",
            str(args.level),
            "--estargz-chunk-size",
            str(args.chunk_size),
            "bench.local/conv:latest",
            "bench.local/conv:esgz",
            tool="ctr-remote",
            timeout=3600,
        )
        ref_s = time.perf_counter() - t0
        export_layout(cd, "bench.local/conv:esgz", work / "ref")
    finally:
        cd.stop()
    ref = OCILayout(work / "ref")
    rd = ref.resolve()
    ref_size = sum(d.size for d in Manifest.parse(ref.fetch(rd), rd.media_type).layers)

    t0 = time.perf_counter()
    out = convert_image(
        OCILayout(work / "src", "latest"),
        OCILayout(work / "ours", create=True),
        ConvertOptions(compression_level=args.level, chunk_size=args.chunk_size, oci=True),
    )
    ours_s = time.perf_counter() - t0
    ours = OCILayout(work / "ours")
    ours_size = sum(d.size for d in Manifest.parse(ours.fetch(out), out.media_type).layers)
    report(mib, args.level, ref_s, ref_size, ours_s, ours_size)
    subprocess.run(["rm", "-rf", str(work)], check=False)


def report(mib: float, level: int, ref_s: float, ref_size: int, ours_s: float, ours_size: int) -> None:
    print(f"input: {mib:.0f} MiB uncompressed, gzip level {level}, {os.cpu_count()} CPUs")
    print(f"{'tool':12} {'seconds':>8} {'MiB/s':>8} {'output MiB':>11}")
    print(f"{'ctr-remote':12} {ref_s:8.1f} {mib / ref_s:8.1f} {ref_size / (1 << 20):11.1f}")
    print(f"{'lazypull':12} {ours_s:8.1f} {mib / ours_s:8.1f} {ours_size / (1 << 20):11.1f}")
    print(f"throughput ratio lazypull/ctr-remote: {ref_s / ours_s:.2f}x; size ratio: {ours_size / ref_size:.3f}")


def layer_bytes(store: ImageStore) -> int:
    d = store.resolve()
    if is_index(d.media_type):
        d = Index.parse(store.fetch(d), d.media_type).select(host_platform())
    return sum(x.size for x in Manifest.parse(store.fetch(d), d.media_type).layers)


def registry_run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    per = args.mb // args.layers
    tars = [make_tar(per, seed=i, system_files=(i == 0)) for i in range(args.layers)]
    mib = sum(len(t) for t in tars) / (1 << 20)
    write_image(work / "src", tars)
    reg = start_registry(work / "reg")
    ropts = RegistryOptions(plain_http=True)
    try:
        src = f"{reg.host}/bench/conv:src"
        copy_image(OCILayout(work / "src", "latest"), open_store(src, ropts, for_push=True), tag="src")
        cd = start_containerd(work / "containerd")
        try:
            t0 = time.perf_counter()
            cd.ctr("image", "pull", "--plain-http", src, tool="ctr-remote", timeout=3600)
            level, chunk = str(args.level), str(args.chunk_size)
            conv = ["--estargz", "--oci", "--estargz-compression-level", level, "--estargz-chunk-size", chunk]
            cd.ctr("image", "convert", *conv, src, f"{reg.host}/bench/conv:ref", tool="ctr-remote", timeout=3600)
            cd.ctr("image", "push", "--plain-http", f"{reg.host}/bench/conv:ref", tool="ctr-remote", timeout=3600)
            ref_s = time.perf_counter() - t0
        finally:
            cd.stop()
        t0 = time.perf_counter()
        opts = ConvertOptions(compression_level=args.level, chunk_size=args.chunk_size, oci=True)
        dst = open_store(f"{reg.host}/bench/conv:ours", ropts, for_push=True)
        convert_image(open_store(src, ropts), dst, opts, tag="ours")
        ours_s = time.perf_counter() - t0
        print(f"registry to registry, {args.layers} layers (ctr-remote: pull + convert + push; lazypull: convert)")
        ref_size = layer_bytes(open_store(f"{reg.host}/bench/conv:ref", ropts))
        report(mib, args.level, ref_s, ref_size, ours_s, layer_bytes(open_store(f"{reg.host}/bench/conv:ours", ropts)))
    finally:
        reg.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
