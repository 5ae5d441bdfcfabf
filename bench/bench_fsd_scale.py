"""Node scale of the layer server: N images x L distinct small layers pulled lazily through a
real containerd (``ctr-remote image rpull``), then the memory (RSS) and number of processes of
the snapshotter daemon and everything it spawned, and the rpull time of each image.

    PYTHONPATH=$PWD python3 -m bench.bench_fsd_scale --images 5 --layers 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lazypull.cli.main import main as lazypull
from tests.support.containerd import start_containerd
from tests.support.daemon import start_daemon
from tests.support.images import Entry, busybox_layer, write_image
from tests.support.registry import start_registry


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                ppid = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(n_images: int, n_layers: int, work: Path, concurrent: bool = False) -> dict[str, object]:
    reg = start_registry(work / "registry")
    refs = []
    try:
        for i in range(n_images):
            layers: list[list[Entry] | bytes] = [[*busybox_layer(), Entry(f"etc/image-{i}", data=b"%d\n" % i)]]
            for j in range(1, n_layers):
                layers.append([Entry(f"l{j}", "dir", mode=0o755), Entry(f"l{j}/f-{i}-{j}.txt", data=os.urandom(4096))])
            write_image(work / f"src{i}", layers, cmd=["/bin/sh"])
            plain = f"{reg.host}/scale/img{i}:orig"
            assert lazypull(["copy", "--plain-http", f"oci:{work / f'src{i}'}:latest", plain]) == 0
            assert lazypull(["convert", "--plain-http", "--oci", plain, f"{reg.host}/scale/img{i}:esgz"]) == 0
            refs.append(f"{reg.host}/scale/img{i}:esgz")
        cfg = f'plain_http_hosts = ["{reg.host}"]\nno_background_fetch = true\n'
        daemon = start_daemon(work / "daemon", cfg)
        cd = start_containerd(work / "containerd", proxy_plugins={"lazypull": daemon.address})
        try:

            def pull(ref: str) -> float:
                t0 = time.monotonic()
                cd.ctr("image", "rpull", "--plain-http", "--snapshotter", "lazypull", ref, tool="ctr-remote")
                return time.monotonic() - t0

            if concurrent:
                with ThreadPoolExecutor(max_workers=len(refs)) as pool:
                    times = list(pool.map(pull, refs))
            else:
                times = [pull(ref) for ref in refs]
            run_s = []
            for i, ref in enumerate(refs):
                t0 = time.monotonic()
                out = cd.ctr("run", "--rm", "--snapshotter", "lazypull", ref, f"c{i}", "/bin/cat", f"/etc/image-{i}")
                run_s.append(time.monotonic() - t0)
                assert out.stdout.strip() == str(i)
            assert daemon.proc is not None
            procs = descendants(daemon.proc.pid)
            fsd = [p for p in procs if p != daemon.proc.pid]
            result = {
                "images": n_images,
                "layers_per_image": n_layers,
                "layers_mounted": len(daemon.layers()),
                "concurrent": concurrent,
                "rpull_s": [round(t, 3) for t in times],
                "rpull_median_s": round(statistics.median(times), 3),
                "run_median_s": round(statistics.median(run_s), 3),
                "processes": len(procs),
                "rss_total_mb": round(sum(rss_kib(p) for p in procs) / 1024, 1),
                "rss_daemon_mb": round(rss_kib(daemon.proc.pid) / 1024, 1),
                "rss_layer_server_mb": round(sum(rss_kib(p) for p in fsd) / 1024, 1),
                "layer_server_threads": sum(len(os.listdir(f"/proc/{p}/task")) for p in fsd),
                "fallbacks": daemon.log().count("falling back to a normal pull"),
            }
            reasons = [line for line in daemon.log().splitlines() if "falling back" in line]
            if reasons:
                result["first_fallbacks"] = reasons[:3]
            if os.environ.get("SCALE_LOG"):
                print(daemon.log()[-20000:])
        finally:
            cd.stop()
            daemon.stop()
            daemon.stop_layers()
    finally:
        reg.stop()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--concurrent", action="store_true", help="pull all images at once")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lazypull-scale-") as d:
        print(json.dumps(run(args.images, args.layers, Path(d), args.concurrent), indent=1))


if __name__ == "__main__":
    main()
