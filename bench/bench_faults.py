"""How long a reader and a Prepare wait on a misbehaving registry (needs root: FUSE mounts).

    python3 bench/bench_faults.py [--deadline 3] [--resolve-timeout 10]

Mounts an image with `lazypull mount --fetch-timeout DEADLINE` through the fault proxy and
times `cat` of an unread file while the registry trickles (1 KB/s), accepts and never
answers, answers the headers and then nothing, resets every request, or has silently
forgotten the pooled keep-alive connection; then the same file once the registry is healthy.
Last, times the Prepare-side manifest lookup against a port that never accepts, twice (the
second uses the remembered failure).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lazypull.cli.main import main as cli
from lazypull.oci import mediatypes as mt
from lazypull.registry.client import RegistryClient
from lazypull.registry.options import RegistryOptions
from lazypull.snapshot.remote import LayerResolver, NotRemote
from tests.support.images import Entry, write_image
from tests.support.proxy import start_proxy, unaccepting_port
from tests.support.registry import start_registry

MODES: list[tuple[str, dict[str, object]]] = [
    ("trickle 1 KB/s", {"trickle_bps": 1024}),
    ("accepts, never answers", {"stall": "accept"}),
    ("headers, then nothing", {"stall": "body"}),
    ("resets every request", {"resets": 10**6}),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deadline", type=float, default=3.0, help="lazypull mount --fetch-timeout")
    ap.add_argument("--resolve-timeout", type=float, default=10.0, help="[resolver] timeout_sec")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    reg = start_registry(root / "registry")
    proxy = start_proxy(reg.url)
    files = {f"data/f{i}.bin": os.urandom(300_000) for i in range(len(MODES) + 2)}
    mnt, state = root / "mnt", root / "state"
    try:
        write_image(root / "src", [[Entry("data", "dir", mode=0o755), *(Entry(n, data=d) for n, d in files.items())]])
        plain = f"{reg.host}/bench/faults:orig"
        assert cli(["copy", "--plain-http", f"oci:{root / 'src'}:latest", plain]) == 0
        assert cli(["convert", "--plain-http", "--oci", plain, f"{reg.host}/bench/faults:esgz"]) == 0
        flags = ["--plain-http", "--no-prefetch", "--no-background-fetch", "--cache-dir", str(root / "cache")]
        flags += ["--state-dir", str(state), "--fetch-timeout", str(args.deadline)]
        assert cli(["mount", "--daemon", *flags, f"{proxy.host}/bench/faults:esgz", str(mnt)]) == 0
        print(f"| registry | read (deadline {args.deadline:g} s) | after healing |")
        print("|---|---|---|")
        for i, (name, mode) in enumerate(MODES):
            proxy.faults.match = "/blobs/"
            for k, v in mode.items():
                setattr(proxy.faults, k, v)
            t0 = time.monotonic()
            res = subprocess.run(["cat", str(mnt / f"data/f{i}.bin")], capture_output=True)
            took = time.monotonic() - t0
            outcome = "EIO" if b"Input/output error" in res.stderr else f"rc {res.returncode}"
            proxy.heal()
            proxy.faults.resets = 0
            time.sleep(2.1)  # a failed chunk fails fast for 2 s (the kernel's retry of a failed readahead)
            t0 = time.monotonic()
            ok = "ok" if (mnt / f"data/f{i}.bin").read_bytes() == files[f"data/f{i}.bin"] else "WRONG"
            print(f"| {name} | {outcome} after {took:.2f} s | {ok} in {time.monotonic() - t0:.2f} s |")
        n = len(MODES)
        (mnt / f"data/f{n}.bin").read_bytes()  # a keep-alive connection in the pool
        proxy.faults.stale_after = 1  # ... which the registry side now silently ignores
        t0 = time.monotonic()
        ok = (mnt / f"data/f{n + 1}.bin").read_bytes() == files[f"data/f{n + 1}.bin"]
        print(f"| forgot the pooled connection | {'ok' if ok else 'WRONG'} after {time.monotonic() - t0:.2f} s | |")
    finally:
        cli(["umount", "--state-dir", str(state), str(mnt)])
        proxy.stop()
        reg.stop()
    with unaccepting_port() as dead:
        resolver = LayerResolver(RegistryClient(RegistryOptions(plain_http=True)), timeout=args.resolve_timeout)
        labels = {mt.LABEL_STARGZ_REFERENCE: f"{dead}/bench/img:v1", mt.LABEL_STARGZ_DIGEST: "sha256:" + "0" * 64}
        for attempt in ("first layer", "next layer"):
            t0 = time.monotonic()
            try:
                resolver.resolve(labels)
            except NotRemote:
                pass
            print(f"Prepare lookup, registry never accepts, {attempt}: fallback after {time.monotonic() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
