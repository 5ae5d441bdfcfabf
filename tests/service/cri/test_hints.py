"""The pod's prefetch hint: parsing, globbing, and resolution across layers."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from lazypull.cache.chunks import ChunkCache
from lazypull.format import BytesSource, build_estargz, open_estargz
from lazypull.service.cri.hints import HintError, hint_value, parse_hints
from lazypull.service.cri.prefetch import fetch_chunks, select_files
from tests.support.images import Entry, make_tar


def names(patterns: str, paths: list[str]) -> list[str]:
    pats = parse_hints(patterns)
    return [p for p in paths if any(x.matches(p) for x in pats)]


def test_the_guides_example_parses_and_globs_stay_in_one_component() -> None:
    value = '["/app/app", "/app/config/*", "/usr/lib/x86_64-linux-gnu/libssl.so.3"]\n'
    paths = [
        "app/app",
        "app/apps",
        "app/config/a.yaml",
        "app/config/sub/b.yaml",
        "usr/lib/x86_64-linux-gnu/libssl.so.3",
    ]
    assert names(value, paths) == ["app/app", "app/config/a.yaml", "usr/lib/x86_64-linux-gnu/libssl.so.3"]


def test_directories_double_star_classes() -> None:
    paths = ["etc/ssl/a.pem", "etc/ssl/x/b.pem", "etc/sslx", "lib/libc.so.6", "lib/libm.so.6", "lib/x/libz.so"]
    assert names('["/etc/ssl"]', paths) == ["etc/ssl/a.pem", "etc/ssl/x/b.pem"]
    assert names('["/lib/**/lib?.so.*"]', paths) == ["lib/libc.so.6", "lib/libm.so.6"]
    assert names('["/lib/**/lib?.so*"]', paths) == ["lib/libc.so.6", "lib/libm.so.6", "lib/x/libz.so"]
    assert names('["/lib/**.so"]', paths) == ["lib/x/libz.so"]
    assert names('["/lib/lib[!c].so.6"]', paths) == ["lib/libm.so.6"]
    assert names('["/./lib//libc.so.6"]', paths) == ["lib/libc.so.6"]


@pytest.mark.parametrize(
    "value",
    ['"/app"', "not json", '["relative/path"]', "[1, 2]", '["/a/../etc/shadow"]', '["/x/[ab"]', "{}", '["/a\\u0000"]'],
)
def test_malformed_hints_are_errors(value: str) -> None:
    with pytest.raises(HintError):
        parse_hints(value)


def test_too_many_patterns() -> None:
    with pytest.raises(HintError, match="at most"):
        parse_hints(str([f"/f{i}" for i in range(1000)]).replace("'", '"'))


def test_pod_annotation_wins_over_the_image_specs() -> None:
    assert hint_value({}, {"io.containerd.image.prefetch": "b"}) == "b"
    assert hint_value({"io.containerd.image.prefetch": "a"}, {"io.containerd.image.prefetch": "b"}) == "a"
    assert hint_value({"other": "x"}) is None


def layer(entries: list[Entry]) -> tuple[bytes, object]:
    out = io.BytesIO()
    build_estargz(io.BytesIO(make_tar(entries)), out, chunk_size=64 << 10)
    blob = out.getvalue()
    return blob, open_estargz(BytesSource(blob))


BIG = os.urandom(300 << 10)


def test_upper_layers_win_and_whiteouts_hide(tmp_path: Path) -> None:
    _, lower = layer(
        [
            Entry("app", "dir", mode=0o755),
            Entry("app/app", data=b"old binary"),
            Entry("app/config", "dir", mode=0o755),
            Entry("app/config/a.yaml", data=b"a: 1"),
            Entry("app/config/gone.yaml", data=b"gone"),
            Entry("app/data", "dir", mode=0o755),
            Entry("app/data/lower.bin", data=b"lower"),
            Entry("app/link", "hardlink", link="app/app"),
            Entry("opt", "dir", mode=0o755),
            Entry("opt/x", data=b"x"),
        ]
    )
    upper_blob, upper = layer(
        [
            Entry("app", "dir", mode=0o755),
            Entry("app/app", data=BIG),
            Entry("app/config", "dir", mode=0o755),
            Entry("app/config/.wh.gone.yaml"),
            Entry("app/data", "dir", mode=0o755),
            Entry("app/data/.wh..wh..opq"),
            Entry("app/data/upper.bin", data=b"upper"),
            Entry("opt", data=b"now a file"),
        ]
    )
    pats = parse_hints('["/app/app", "/app/config/*", "/app/data/*", "/app/link", "/opt/x", "/opt"]')
    chosen = select_files([lower, upper], pats)  # type: ignore[list-item]
    got = sorted((pos, e.name) for pos, e in chosen)
    # app/app from the upper layer; gone.yaml whited out; lower.bin hidden by the opaque dir;
    # the lower hardlink resolves to the lower app/app; /opt/x hidden under the upper file /opt.
    assert got == [(0, "app/app"), (0, "app/config/a.yaml"), (1, "app/app"), (1, "app/data/upper.bin"), (1, "opt")]

    cache = ChunkCache(tmp_path / "cache")
    entries = [e for pos, e in chosen if pos == 1]
    res = fetch_chunks(upper, BytesSource(upper_blob), cache, entries, time.monotonic() + 30)  # type: ignore[arg-type]
    assert res.complete and res.chunks >= 5  # BIG spans several 64 KiB chunks
    for e in entries:
        for c in e.chunks:
            assert cache.path_of(c.digest) is not None  # on disk, where every mount finds it
    again = fetch_chunks(upper, BytesSource(upper_blob), cache, entries, time.monotonic() + 30)  # type: ignore[arg-type]
    assert again.bytes_fetched == 0 and again.bytes_cached == sum(e.size for e in entries)


def test_corrupted_blob_is_never_cached(tmp_path: Path) -> None:
    blob, idx = layer([Entry("f", data=BIG)])
    entry = idx.lookup("f")  # type: ignore[attr-defined]
    bad = bytearray(blob)
    c = entry.chunks[1]
    bad[c.blob_offset + 20] ^= 0xFF
    cache = ChunkCache(tmp_path / "cache")
    with pytest.raises(Exception):  # noqa: B017 - a digest or decompression error, either is right
        fetch_chunks(idx, BytesSource(bytes(bad)), cache, [entry], time.monotonic() + 30)  # type: ignore[arg-type]
    assert cache.path_of(c.digest) is None
