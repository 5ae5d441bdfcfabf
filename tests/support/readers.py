"""Reader processes that time every read of lazily mounted layers (run inside a mount
namespace through nsenter, so they are separate processes with their own files).

``python -m tests.support.readers OUT STOP FILE...``: until the file STOP exists, read each
FILE in turn after dropping its pages (``POSIX_FADV_DONTNEED``: the read reaches the layer
server) and ``statfs`` its layer (never cached by FUSE); append one JSON line per read to OUT:
``{"t": start, "s": seconds, "file": ..., "error": ...}``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Reads:
    """What the readers recorded."""

    rows: list[dict[str, object]]

    @property
    def failures(self) -> list[dict[str, object]]:
        return [r for r in self.rows if "error" in r]

    def slowest(self, start: float = 0.0, end: float = float("inf")) -> float:
        """The longest read (seconds) of those begun between *start* and *end* (time.time())."""
        return max(self.durations(start, end), default=0.0)

    def durations(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        """How long each read begun between *start* and *end* took (seconds), shortest first."""
        return sorted(float(r["s"]) for r in self.rows if start <= float(r["t"]) < end)  # type: ignore[arg-type]


def percentile(values: list[float], q: float) -> float:
    """The *q*-th percentile (nearest rank) of *values*, sorted; 0 for none."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, math.ceil(len(values) * q / 100) - 1))]


def read_once(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while os.read(fd, 1 << 20):
            pass
    finally:
        os.close(fd)
    os.statvfs(path)


def run(out: Path, stop: Path, files: list[str]) -> None:
    with out.open("a") as f:
        i = 0
        while not stop.exists():
            path = files[i % len(files)]
            i += 1
            t, t0 = time.time(), time.monotonic()
            row: dict[str, object] = {"t": t, "file": path}
            try:
                read_once(path)
            except OSError as e:
                row["error"] = f"{type(e).__name__}: {e}"
            row["s"] = time.monotonic() - t0
            f.write(json.dumps(row) + "\n")
            f.flush()
            time.sleep(0.002)


def collect(outs: list[Path]) -> Reads:
    return Reads([json.loads(line) for p in outs for line in p.read_text().splitlines() if line.strip()])


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
