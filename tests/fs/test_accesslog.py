"""The access log: paths in first-read order, sequential reads as one range, bounded ranges."""

from __future__ import annotations

from lazypull.fs.accesslog import MAX_RANGES, AccessLog


def test_first_read_order_and_ranges() -> None:
    log = AccessLog()
    log.note("b", 0, 4096)
    log.note("a", 100, 10)
    log.note("b", 4096, 4096)  # sequential: one range
    log.note("b", 1 << 20, 4096)
    (b_path, b_t, b_ranges), (a_path, a_t, _) = log.rows()
    assert (b_path, a_path) == ("b", "a") and b_t <= a_t
    assert b_ranges == [[0, 8192], [1 << 20, 4096]]
    assert list(log) == ["b", "a"] and "a" in log and len(log) == 2


def test_scattered_reads_are_joined_beyond_the_bound() -> None:
    log = AccessLog()
    for i in range(MAX_RANGES * 2):
        log.note("f", (MAX_RANGES * 2 - i) * 10_000, 100)  # backwards: never sequential
    ((_, _, ranges),) = log.rows()
    assert len(ranges) <= MAX_RANGES
    assert sum(n for _, n in ranges) >= MAX_RANGES * 2 * 100
