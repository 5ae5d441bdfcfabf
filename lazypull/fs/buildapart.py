"""Building a very large layer's compact index in a process of its own.

A TOC too large to be served from its parsed form (over ``PARSED_SERVES_UP_TO`` entries)
is only needed long enough to write its compact index; parsing it costs about a kilobyte per
entry. In the layer server that peak would stay: the freed heap is fragmented, and the
server's RSS would ratchet up with every such layer it ever opened; the parse would also
hold the server's interpreter lock for seconds while other layers' requests wait. A child
process reads the TOC from the bytes the server already fetched and verified (saved beside
the index, see :mod:`lazypull.fs.opened`), checks it again, writes the index file and exits:
all of its memory goes back, and the server maps the file.

Those children are background work beside the layers being served: each runs at a lower CPU
priority (:data:`NICE`), and no more run at once than the server may use cores (:data:`SLOTS`;
more would only add their peaks, not speed). A crafted image of 24 such layers otherwise had
four children at once taking both cores of a 2-core node from the server's request threads.

    python -m lazypull.fs.buildapart SAVED DESCRIPTOR_JSON INDEX_PATH KEY_HEX
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

from lazypull.errors import FormatError, LazypullError
from lazypull.fs.opened import ReplaySource
from lazypull.oci.types import Descriptor

BUILD_TIMEOUT = 300.0
NICE = 10  # a child's CPU weight is a tenth of a request thread's (of the server's, at nice 0)
# The cores this process may run on (its CPU set, not the host's count).
SLOTS = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
_slots = threading.BoundedSemaphore(SLOTS)


class BuildApart(Exception):
    """Raised from the admission hook: the TOC is to be parsed in a child process instead."""


class _SavedOnly:
    """The blob as far as the saved bytes go: the child never fetches."""

    def __init__(self, size: int) -> None:
        self.size = size

    def read_at(self, offset: int, length: int) -> bytes:
        raise FormatError(f"the saved TOC bytes do not cover [{offset}, {offset + length})")


def build_in_child(
    saved: Path, layer: dict[str, object], path: Path, key: bytes, timeout: float = BUILD_TIMEOUT
) -> None:
    """Have a child process write the compact index of the layer (descriptor *layer*) whose
    open is *saved*; FormatError with the child's last line if it could not."""
    desc = Descriptor.from_json(layer)
    cmd = [sys.executable, "-m", __name__, str(saved), json.dumps(layer), str(path), key.hex()]
    deadline = time.monotonic() + timeout
    if not _slots.acquire(timeout=timeout):
        raise LazypullError(f"building the index of {desc.digest} waited {timeout:.0f}s for {SLOTS} others to end")
    try:
        r = subprocess.run(
            cmd, capture_output=True, timeout=max(deadline - time.monotonic(), 1.0), stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        path.unlink(missing_ok=True)
        raise LazypullError(f"building the index of {desc.digest} took over {timeout:.0f}s") from None
    finally:
        _slots.release()
    if r.returncode != 0:
        lines = r.stderr.decode(errors="replace").strip().splitlines()
        raise FormatError(lines[-1][:500] if lines else f"index build of {desc.digest} exited {r.returncode}")


def _main(argv: list[str]) -> int:
    from lazypull.format.compactwrite import write_file
    from lazypull.format.soci.dispatch import open_layer_index

    saved, desc_json, path, key = Path(argv[0]), argv[1], Path(argv[2]), bytes.fromhex(argv[3])
    desc = Descriptor.from_json(json.loads(desc_json))
    try:
        source = ReplaySource(_SavedOnly(desc.size), saved)
        index = open_layer_index(desc, source, _no_blob, None)
        write_file(index, path, key)
    except (LazypullError, OSError, ValueError) as e:
        print(f"{type(e).__name__}: {e}" if isinstance(e, OSError) else str(e), file=sys.stderr)
        return 1
    return 0


def _no_blob(d: Descriptor) -> NoReturn:
    raise FormatError(f"a separate index build reads no other blob ({d.digest})")


if __name__ == "__main__":
    os.umask(0o077)
    try:
        os.nice(NICE)
    except OSError:
        pass  # (not allowed: the build runs at the server's priority)
    raise SystemExit(_main(sys.argv[1:]))
