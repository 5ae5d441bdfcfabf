"""Reads during a package upgrade of both units under a real (private) systemd, by hand:

    PYTHONPATH=$PWD .venv/bin/python -m bench.bench_upgrade [--way reload|restart] [--runs 3]

``reload`` is what scripts/install-node.sh does (``systemctl try-reload-or-restart``: the new
layer server takes every FUSE session over from the old one); ``restart`` stops the old
server, and the next one gets the sessions back from systemd's fd store. Five processes read
two lazily mounted layers throughout (tests/service/test_upgrade_systemd.py); printed: the
failed reads and the slowest before, during each unit's command, and after.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tests.service.test_upgrade_systemd import DAEMON, FSD, UPGRADE, _handover, upgrade_while_reading
from tests.support.systemd import private_systemd

WAYS = {
    "reload": UPGRADE,
    "restart": (["daemon-reload"], ["restart", FSD], ["restart", DAEMON]),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--way", choices=sorted(WAYS), default="reload")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="upg-") as d, private_systemd(Path(d)) as sd:
            up = upgrade_while_reading(sd, Path(d), WAYS[args.way])
            extra = ""
            if args.way == "reload":
                h0, h1 = _handover(Path(d) / "units.log")
                worst = up.reads.slowest(h0 - 0.1, h1 + 0.1)
                extra = f"; handover {(h1 - h0) * 1000:.0f} ms, slowest read begun in it {worst * 1000:.0f} ms"
            print(f"{args.way} run {i + 1}: {up.summary()}{extra}", flush=True)


if __name__ == "__main__":
    main()
