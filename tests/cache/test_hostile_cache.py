"""Cache paths come only from validated digests and stay inside the cache directory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lazypull.cache.chunks import ChunkCache
from lazypull.errors import InvalidDigestError, LazypullError


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:/../../{victim}",
        "sha256:../{victim}",
        "sha256:" + "A" * 64,
        "sha256:" + "0" * 63,
        "sha512:" + "0" * 128,
        "sha256:" + "0" * 64 + "/../x",
        "",
    ],
)
def test_malformed_digests_never_become_paths(tmp_path: Path, bad: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"host file")
    c = ChunkCache(tmp_path / "c", memory_bytes=0)
    digest = bad.format(victim=victim)
    for op in (c.get, c.contains, c.path_of, c.remove, lambda d: c.put_parts(d, [b"x"])):
        with pytest.raises(InvalidDigestError):
            op(digest)
    assert victim.read_bytes() == b"host file"


def test_a_subdirectory_leading_out_of_the_cache_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    data = b"chunk"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    hexd = digest[7:]
    (outside / hexd).write_bytes(data)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / hexd[:2]).symlink_to(outside)
    c = ChunkCache(tmp_path / "c", memory_bytes=0)
    with pytest.raises(LazypullError, match="leaves the cache directory"):
        c.get(digest)
    assert (outside / hexd).read_bytes() == data


def test_foreign_files_in_the_cache_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "c"
    (root / "ab").mkdir(parents=True)
    (root / "ab" / "not-a-digest").write_bytes(b"x")
    (root / "ab" / ("cd" + "0" * 62)).write_bytes(b"x")  # in the wrong subdirectory
    c = ChunkCache(root, max_bytes=1)
    assert c.disk_bytes == 0
    data = b"y" * 10
    c.put("sha256:" + hashlib.sha256(data).hexdigest(), data)
    c.flush()  # eviction runs over indexed entries only: no error on the foreign names
    assert (root / "ab" / "not-a-digest").exists()
