"""Reads during a package upgrade of both units under a real (private) systemd, by hand:

    PYTHONPATH=$PWD .venv/bin/python -m bench.bench_upgrade [--way reload|restart] [--runs 5] [--cache-files N]

``reload`` is what scripts/install-node.sh does (``systemctl try-reload-or-restart``: the new
layer server takes every FUSE session over from the old one); ``restart`` stops the old
server, and the next one gets the sessions back from systemd's fd store. Five processes read
two lazily mounted layers throughout (tests/service/test_upgrade_systemd.py).

Printed per run: the failed reads; how long the layer server's command took (``systemctl
reload`` or ``restart`` returning: the whole reload, the new binary's start included); the
reads begun during it (p50, p99, max) beside those begun in as long a time just before the
upgrade (up to 1 s: the machine's own noise); the handover (reload: from the old server refusing
changes to its exit; restart: from the old server's last read to the new one serving every
layer) and the slowest read begun in it. ``--cache-files N``: the node's cache holds N
chunks of other layers beforehand (what a starting server scans). Then the same over all runs, and the load average
(``/proc/loadavg``) before and after: the numbers mean little without it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tests.service.test_upgrade_systemd import DAEMON, FSD, UPGRADE, upgrade_while_reading
from tests.support.readers import percentile
from tests.support.systemd import private_systemd

WAYS = {
    "reload": UPGRADE,
    "restart": (["daemon-reload"], ["restart", FSD], ["restart", DAEMON]),
}
# The log lines that begin and end a handover, per way (lazypull/service/layerserver.py).
WINDOWS = {
    "reload": ("handing 2 layers over", "its successor serves its 2 layers"),
    "restart": ("stopped reading 2 layers", "re-attached at"),
}


def _at(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def handover(log: Path, way: str, after: float) -> tuple[float, float]:
    """When the handover of the upgrade begun at *after* began and ended (time.time())."""
    first, last = WINDOWS[way]
    lines = [x for x in log.read_text().splitlines() if x[:4].isdigit() and _at(x) >= after]
    begin = next(_at(x) for x in lines if first in x)
    ends = [_at(x) for x in lines if last in x and _at(x) >= begin]
    return begin, ends[-1] if way == "restart" else ends[0]  # restart: the last layer re-attached


@dataclass
class Run:
    command: float  # seconds the layer server's command took
    during: list[float]  # reads begun during it (seconds, sorted)
    before: list[float]  # reads begun in as long a time before the upgrade
    window: float  # the handover (seconds)
    in_window: float  # the slowest read begun in it
    failed: int
    reads: int


def ms(s: float) -> str:
    return f"{s * 1000:.0f} ms"


def dist(values: list[float]) -> str:
    return f"p50 {ms(percentile(values, 50))}, p99 {ms(percentile(values, 99))}, max {ms(max(values, default=0))}"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def one(way: str, cache_files: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="upg-") as d, private_systemd(Path(d)) as sd:
        up = upgrade_while_reading(sd, Path(d), WAYS[way], cache_files)
        r, ts, t1 = up.reads, up.layer_server_started, up.layer_server_done
        h0, h1 = handover(Path(d) / "units.log", way, ts)
        return Run(
            command=t1 - ts,
            during=r.durations(ts, t1),
            before=r.durations(up.started - min(t1 - ts, 1.0), up.started),
            window=h1 - h0,
            in_window=r.slowest(h0 - 0.01, h1),
            failed=len(r.failures),
            reads=len(r.rows),
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--way", choices=sorted(WAYS), default="reload")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--cache-files", type=int, default=0, help="chunks of other layers in the cache beforehand")
    args = p.parse_args()
    print(f"{args.way}, {args.cache_files} other chunks cached: load average {loadavg()} ({os.cpu_count()} cores)")
    runs = []
    for i in range(args.runs):
        run = one(args.way, args.cache_files)
        runs.append(run)
        print(
            f"{args.way} run {i + 1}: {run.reads} reads, {run.failed} failed; the layer server's command "
            f"{ms(run.command)}; reads begun in it: {dist(run.during)} (just before: {dist(run.before)}); "
            f"handover {ms(run.window)}, slowest read begun in it {ms(run.in_window)}; load {loadavg()}",
            flush=True,
        )
    during = sorted(x for r in runs for x in r.during)
    before = sorted(x for r in runs for x in r.before)
    cmd = [r.command for r in runs]
    print(
        f"{args.way}, {len(runs)} runs: {sum(r.failed for r in runs)} failed reads of {sum(r.reads for r in runs)}; "
        f"the command {ms(min(cmd))}-{ms(max(cmd))} (median {ms(statistics.median(cmd))}); "
        f"reads begun in it: {dist(during)} (just before: {dist(before)}); "
        f"handover {ms(min(r.window for r in runs))}-{ms(max(r.window for r in runs))}, "
        f"slowest read begun in it {ms(max(r.in_window for r in runs))}; load average {loadavg()}"
    )


if __name__ == "__main__":
    main()
