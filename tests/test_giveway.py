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


def _recorder() -> tuple[list[tuple[str, float]], threading.Event, object]:
    ran: list[tuple[str, float]] = []
    done = threading.Event()

    def job(name: str, last: bool = False) -> object:
        def run() -> None:
            ran.append((name, time.monotonic()))
            if last:
                done.set()

        return run

    return ran, done, job


def test_builds_wait_until_no_new_layer_came_for_the_defer_time() -> None:
    q = giveway.Builds(defer_sec=0.3, max_defer_sec=5.0)
    ran, done, job = _recorder()
    t0 = time.monotonic()
    q.submit(job("a"), 10)  # type: ignore[operator]
    time.sleep(0.2)
    q.submit(job("b", last=True), 10)  # type: ignore[operator]  # a new layer: "a" waits on
    assert done.wait(5)
    assert [n for n, _ in ran] == ["a", "b"]  # one at a time, in order
    assert ran[0][1] - t0 >= 0.5  # 0.2 s + the defer time after "b" came


def test_a_layer_that_cannot_wait_is_built_first_and_at_once() -> None:
    q = giveway.Builds(defer_sec=5.0, max_defer_sec=10.0)  # generous bounds: CI machines are busy
    ran, done, job = _recorder()
    q.submit(job("deferred"), 10)  # type: ignore[operator]
    t0 = time.monotonic()
    q.submit(job("urgent", last=True), 10, defer=False)  # type: ignore[operator]
    assert done.wait(2.5) and ran[0][0] == "urgent" and ran[0][1] - t0 < 2.5
    time.sleep(0.1)
    assert [n for n, _ in ran] == ["urgent"]  # the other still waits for its time


def test_builds_start_at_once_when_the_waiting_layers_hold_too_many_entries() -> None:
    q = giveway.Builds(defer_sec=5.0, max_defer_sec=10.0)
    ran, done, job = _recorder()
    t0 = time.monotonic()
    q.submit(job("small"), 10)  # type: ignore[operator]
    q.submit(job("big", last=True), giveway.DEFER_ENTRIES)  # type: ignore[operator]
    assert done.wait(2.5) and [n for n, _ in ran] == ["small", "big"] and time.monotonic() - t0 < 2.5


def test_a_build_waits_at_most_the_max_defer_time_and_can_be_cancelled() -> None:
    q = giveway.Builds(defer_sec=0.5, max_defer_sec=1.0)
    ran, _, job = _recorder()
    t0 = time.monotonic()
    first = q.submit(job("first"), 1)  # type: ignore[operator]
    gone = q.submit(job("gone"), 1)  # type: ignore[operator]
    assert q.cancel(gone) and not q.cancel(gone)
    stop = time.monotonic() + 4.0
    while time.monotonic() < stop and not ran:  # new layers keep coming: the first waits its most
        q.submit(job("later"), 1)  # type: ignore[operator]
        time.sleep(0.05)
    assert ran and ran[0][0] == "first" and 1.0 <= ran[0][1] - t0 < 4.0
    assert not q.cancel(first) and "gone" not in [n for n, _ in ran]


def test_shares_keep_a_hung_key_to_its_limit_and_serve_the_others() -> None:
    shares = giveway.Shares(4, {"host": 2}, name="test-shares")
    hung = threading.Event()
    started: list[str] = []
    done = threading.Event()
    for i in range(10):  # far more hung work than threads
        shares.submit(lambda i=i: (started.append(f"hung{i}"), hung.wait(10)), {"host": "hung"})
    shares.submit(done.set, {"host": "other"})
    try:
        assert done.wait(2)  # a thread was left for it
        time.sleep(0.1)
        assert shares.running("host", "hung") == 2 and len(started) == 2
    finally:
        hung.set()
    assert shares.drain(10) and len(started) == 10


def test_shares_take_queues_in_turn_and_expire_what_waits_too_long() -> None:
    shares = giveway.Shares(1, {"layer": 1}, name="test-turns")
    gate = threading.Event()
    order: list[str] = []
    shares.submit(lambda: gate.wait(10), {"layer": "first"})
    for i in range(3):
        shares.submit(lambda i=i: order.append(f"a{i}"), {"layer": "a"})
    shares.submit(lambda: order.append("b0"), {"layer": "b"})
    expired: list[str] = []
    shares.submit(
        lambda: order.append("late"),
        {"layer": "c"},
        expire_at=time.monotonic() + 0.2,
        on_expire=lambda: expired.append("late"),
    )
    time.sleep(0.5)
    assert expired == ["late"]  # answered for while every thread was held
    gate.set()
    assert shares.drain(10)
    assert order == ["a0", "b0", "a1", "a2"]  # b's one item did not wait behind all of a's
