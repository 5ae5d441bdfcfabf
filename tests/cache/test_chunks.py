from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.cache.chunks import ChunkCache


def dg(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_put_get_survives_restart_with_tight_permissions(tmp_path: Path) -> None:
    c = ChunkCache(tmp_path / "c")
    data = os.urandom(1000)
    c.put(dg(data), data)
    c.flush()
    again = ChunkCache(tmp_path / "c", memory_bytes=0)
    assert again.get(dg(data)) == data
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700
    f = next(p for p in (tmp_path / "c").rglob("*") if p.is_file())
    assert stat.S_IMODE(f.stat().st_mode) == 0o600


def test_corrupted_entry_is_dropped_not_served(tmp_path: Path) -> None:
    c = ChunkCache(tmp_path / "c", memory_bytes=0)
    data = b"good data" * 100
    c.put(dg(data), data)
    c.flush()
    f = next(p for p in (tmp_path / "c").rglob("*") if p.is_file())
    f.write_bytes(b"evil" * 10)
    assert c.get(dg(data)) is None
    assert c.corrupt == 1 and not f.exists()


def test_lru_eviction_bounds_disk(tmp_path: Path) -> None:
    c = ChunkCache(tmp_path / "c", max_bytes=3000, memory_bytes=0)
    blobs = [os.urandom(1000) for _ in range(5)]
    for b in blobs[:3]:
        c.put(dg(b), b)
    c.flush()
    assert c.get(dg(blobs[0])) == blobs[0]  # touch: now most recent
    for b in blobs[3:]:
        c.put(dg(b), b)
    c.flush()
    assert c.disk_bytes <= 3000
    assert c.get(dg(blobs[0])) == blobs[0]
    assert c.get(dg(blobs[1])) is None


def test_leftover_temp_files_are_removed_on_start(tmp_path: Path) -> None:
    (tmp_path / "c" / "ab").mkdir(parents=True)
    (tmp_path / "c" / "ab" / ".tmp-xyz").write_bytes(b"partial")
    ChunkCache(tmp_path / "c")
    assert not (tmp_path / "c" / "ab" / ".tmp-xyz").exists()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB filesystem, to fill up."""
    d = tmp_path / "tiny"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


def test_full_disk_loses_nothing(tiny_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    c = ChunkCache(tiny_disk / "c")
    small, big = os.urandom(1000), os.urandom(256 << 10)
    c.put(dg(small), small)
    c.put(dg(big), big)  # does not fit
    c.flush()
    assert c.get(dg(big)) == big  # still served, from memory
    assert c.put_parts(dg(big), [big[:1000], big[1000:]]) is None
    again = ChunkCache(tiny_disk / "c", memory_bytes=0)
    assert again.get(dg(small)) == small and again.get(dg(big)) is None
    assert not [p for p in (tiny_disk / "c").rglob(".tmp-*")]  # no partial files left behind
    assert "cannot write chunk" in caplog.text or "cannot store" in caplog.text


def test_writer_without_accounting_hands_its_chunks_to_the_owner_of_the_bound(tmp_path: Path) -> None:
    """Two writers, one bound: the owner accounts for (and evicts) what the other wrote."""
    owner = ChunkCache(tmp_path / "c", max_bytes=3000, memory_bytes=0)
    writer = ChunkCache(tmp_path / "c", max_bytes=3000, memory_bytes=0, accounting=False)
    blobs = [os.urandom(1000) for _ in range(5)]
    for b in blobs[:2]:
        owner.put(dg(b), b)
    owner.flush()
    written = [dg(b) for b in blobs[2:]]
    for d, b in zip(written, blobs[2:], strict=True):
        assert writer.put_parts(d, [b]) is not None
    assert writer.disk_bytes == 0 and all(writer.path_of(d) for d in written)  # the writer never evicts
    assert owner.disk_bytes == 2000  # not yet known to the owner
    assert owner.adopt([*written, "sha256:" + "0" * 64]) == 3  # a digest nobody wrote is skipped
    assert owner.disk_bytes <= 3000
    assert owner.get(dg(blobs[0])) is None  # the oldest went first
    assert all(owner.get(d) is not None for d in written)
    assert owner.adopt(written) == 0  # adopting again only refreshes their place
