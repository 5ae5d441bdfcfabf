"""The index memory budget: claims wait their turn, one image keeps to its share, a claim
that can never fit is refused at once, and released memory lets the next one in."""

from __future__ import annotations

import threading
import time

import pytest

from lazypull.fs.indexmemory import PEAK_BYTES_PER_ENTRY, IndexMemory, IndexMemoryError, default_budget, estimate

MB = 1 << 20


def _admit_in_thread(c: object, toc: int, entries: int) -> tuple[threading.Thread, list[BaseException | None]]:
    out: list[BaseException | None] = []

    def run() -> None:
        try:
            c.admit(toc, entries)  # type: ignore[attr-defined]
            out.append(None)
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_a_claim_waits_until_another_is_released() -> None:
    mem = IndexMemory(total=100 * MB, per_image=100 * MB)
    a = mem.claim("reg/a", "sha256:" + "a" * 64)
    a.admit(10 * MB, (50 * MB) // PEAK_BYTES_PER_ENTRY)
    b = mem.claim("reg/b", "sha256:" + "b" * 64)
    t, out = _admit_in_thread(b, 10 * MB, (50 * MB) // PEAK_BYTES_PER_ENTRY)
    time.sleep(0.2)
    assert not out and mem.stats()["waiting"] == 1  # a's 60 MB and b's 60 MB do not fit in 100
    a.release()
    t.join(5)
    assert out == [None] and mem.in_use == estimate(10 * MB, (50 * MB) // PEAK_BYTES_PER_ENTRY)
    b.release()
    assert mem.in_use == 0 and mem.peak <= mem.total


def test_one_image_keeps_to_its_share_while_another_goes_ahead() -> None:
    mem = IndexMemory(total=100 * MB, per_image=40 * MB)
    entries = (30 * MB) // PEAK_BYTES_PER_ENTRY
    first = mem.claim("crafted/image", "sha256:1")
    first.admit(0, entries)
    second = mem.claim("crafted/image", "sha256:2")
    t, out = _admit_in_thread(second, 0, entries)  # 60 MB of one image: over its 40
    time.sleep(0.2)
    assert not out
    other = mem.claim("other/image", "sha256:3")
    other.admit(0, entries)  # the other image's layer is not behind the crafted one's
    assert mem.in_use <= mem.total
    first.release()
    t.join(5)
    assert out == [None]
    second.release()
    other.release()
    assert mem.stats()["in_use"] == 0


def test_a_layer_over_the_per_image_limit_is_refused_at_once_with_the_setting_named() -> None:
    mem = IndexMemory(total=64 * MB, per_image=32 * MB)
    c = mem.claim("crafted/image:latest", "sha256:" + "c" * 64)
    t0 = time.monotonic()
    with pytest.raises(IndexMemoryError) as e:
        c.admit(20 * MB, 300_000)
    assert time.monotonic() - t0 < 1
    msg = str(e.value)
    assert "crafted/image:latest" in msg and "sha256:cccc" in msg and "up to 300000 entries" in msg
    assert "cache.image_index_memory_bytes" in msg and "pulled in full" in msg
    assert mem.in_use == 0 and mem.stats()["refused"] == 1
    c.release()  # releasing what was never held changes nothing
    assert mem.in_use == 0


def test_a_claim_that_waits_too_long_fails_and_says_who_holds_the_memory() -> None:
    mem = IndexMemory(total=64 * MB, per_image=64 * MB, wait_sec=0.3)
    holder = mem.claim("reg/a", "sha256:a")
    holder.admit(0, (50 * MB) // PEAK_BYTES_PER_ENTRY)
    late = mem.claim("reg/b", "sha256:b")
    with pytest.raises(IndexMemoryError, match=r"waited 0s .* claimed by 1 other layers"):
        late.admit(0, (50 * MB) // PEAK_BYTES_PER_ENTRY)
    assert mem.stats()["waiting"] == 0 and mem.stats()["refused"] == 1
    holder.release()
    assert mem.in_use == 0


def test_the_default_budget_is_sized_for_the_node() -> None:
    b = default_budget()
    assert 1 << 30 <= b <= 4 << 30
    mem = IndexMemory()
    assert mem.total == b and mem.per_image == b // 2
    # the largest TOC the format limits admit still fits one image's share
    assert estimate(64 * MB, 300_000) <= IndexMemory(total=1 << 30).per_image <= mem.per_image


def _waits(mem: IndexMemory, n: int) -> None:
    deadline = time.monotonic() + 5
    while mem.stats()["waiting"] < n:
        assert time.monotonic() < deadline, "the claim did not start waiting"
        time.sleep(0.005)


def test_waiting_claims_are_granted_in_the_order_they_came() -> None:
    mem = IndexMemory(total=100 * MB, per_image=100 * MB)
    holder = mem.claim("reg/h", "sha256:h")
    holder.admit(100 * MB, 0)
    granted: list[str] = []
    claims = {}
    threads = []
    for i, mb in enumerate((60, 30, 50, 10)):  # one image each: only the node's budget orders them
        name = f"{mb}MB"
        claims[name] = c = mem.claim(f"reg/{i}", f"sha256:{i}")

        def run(c: object = c, mb: int = mb, name: str = name) -> None:
            c.admit(mb * MB, 0)  # type: ignore[attr-defined]
            granted.append(name)

        threads.append(threading.Thread(target=run, daemon=True))
        threads[-1].start()
        _waits(mem, i + 1)  # each one waits before the next comes
    holder.release()  # 60 and 30 fit (90 MB); 50 does not, and 10, which would, waits behind it
    deadline = time.monotonic() + 5
    while len(granted) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.2)
    assert granted == ["60MB", "30MB"] and mem.stats()["waiting"] == 2
    claims["60MB"].release()  # now 50 goes, then 10
    for t in threads:
        t.join(5)
    assert granted == ["60MB", "30MB", "50MB", "10MB"]
    for c in claims.values():
        c.release()
    assert mem.in_use == 0 and mem.stats()["waiting"] == 0


def test_a_new_claim_does_not_pass_one_that_waits() -> None:
    mem = IndexMemory(total=100 * MB, per_image=100 * MB)
    holder = mem.claim("reg/h", "sha256:h")
    holder.admit(70 * MB, 0)
    big = mem.claim("reg/big", "sha256:big")
    t, out = _admit_in_thread(big, 50 * MB, 0)
    _waits(mem, 1)
    small = mem.claim("reg/small", "sha256:small")
    t2, out2 = _admit_in_thread(small, 20 * MB, 0)  # it would fit, but comes after the big one
    _waits(mem, 2)
    time.sleep(0.1)
    assert not out and not out2
    holder.release()
    t.join(5)
    t2.join(5)
    assert out == [None] and out2 == [None] and mem.in_use == 70 * MB
    big.release()
    small.release()


def test_a_claim_waiting_for_its_images_share_holds_up_no_other_image() -> None:
    mem = IndexMemory(total=100 * MB, per_image=50 * MB)
    first = mem.claim("crafted/image", "sha256:1")
    first.admit(40 * MB, 0)
    second = mem.claim("crafted/image", "sha256:2")
    t, out = _admit_in_thread(second, 40 * MB, 0)  # 80 MB of one image: over its 50
    _waits(mem, 1)
    third = mem.claim("crafted/image", "sha256:3")
    t3, out3 = _admit_in_thread(third, 5 * MB, 0)  # of the same image: after the second, in turn
    _waits(mem, 2)
    other = mem.claim("other/image", "sha256:o")
    other.admit(10 * MB, 0)  # another image's claim goes past both at once
    time.sleep(0.1)
    assert not out and not out3
    first.release()
    t.join(5)
    t3.join(5)
    assert out == [None] and out3 == [None]
    for c in (second, third, other):
        c.release()
    assert mem.in_use == 0
