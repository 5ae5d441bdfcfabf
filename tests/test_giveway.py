"""Background builds give way to requests: the pacer sleeps while requests come, within a bound."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from lazypull import giveway
from lazypull.format import BytesSource, open_layer
from lazypull.format.compactwrite import serialize, write_file
from tests.format.helpers import build
from tests.support.images import Entry


def test_the_pacer_waits_while_requests_come_and_not_beyond_its_budget() -> None:
    time.sleep(giveway.QUIET_SEC * 2)
    quiet = giveway.Pacer(max_pause=1.0)
    quiet()
    assert quiet.paused == 0  # no requests: no pause

    stop = threading.Event()

    def requests() -> None:
        while not stop.is_set():
            giveway.request_seen()
            time.sleep(0.0005)

    t = threading.Thread(target=requests)
    t.start()
    try:
        busy = giveway.Pacer(max_pause=0.05)
        t0 = time.monotonic()
        busy()
        assert 0.05 <= busy.paused < 0.06 and time.monotonic() - t0 >= 0.05
        t1 = time.monotonic()
        busy()  # its budget is spent: no more pauses
        assert time.monotonic() - t1 < 0.01
    finally:
        stop.set()
        t.join()


def test_the_index_writer_calls_its_pace_between_steps(tmp_path: Path) -> None:
    blob, _ = build([Entry(f"d{i // 50}/f{i}", data=b"x") for i in range(1000)], chunk_size=64 << 10)
    index = open_layer(BytesSource(blob))
    calls = []
    written = write_file(index, tmp_path / "index", b"k", pace=lambda: calls.append(1))
    assert len(calls) >= 10  # every few hundred entries, in each pass
    assert written.nbytes == len(serialize(index, b"k"))
