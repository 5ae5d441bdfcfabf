"""One layer, one registry, one image cannot hold up the others in the shared layer server
(in-process, real FUSE mounts): hung reads, index builds and hung prefetches each keep to
their share, and unmounting gives back what a layer held."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lazypull.fs import spec as spec_mod
from lazypull.fs.fsdclient import FsdClient, socket_path
from lazypull.fs.indexmemory import IndexMemory, estimate
from lazypull.service.layerserver import LayerServer
from lazypull.snapshot.snapshotter import RemoteSettings, Snapshotter
from tests.service.test_fsd import Slow, make_layer, server, spec
from tests.support.hostile import CraftedLayer, wide_layer, write_blob

__all__ = ["server"]  # the fixture


def _mount(client: FsdClient, tmp: Path, name: str, files: dict[str, bytes], **kw: object) -> Path:
    """A layer whose blob lies in its own directory (its own "registry host")."""
    where = tmp / f"host-{name}"
    where.mkdir()
    blob, desc = make_layer(where, name, files)
    mp = tmp / f"m-{name}"
    _, fd = client.mount(spec(tmp, blob, desc, **kw), mp, timeout=30)
    os.close(fd)
    return mp


def _timed(fn: Callable[[], object], limit: float) -> tuple[float, object]:
    """How long *fn* took (in a thread, given up on after *limit*: inf then) and its result."""
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(limit)
    return (time.monotonic() - t0 if out else float("inf")), (out[0] if out else None)


def test_a_hung_registry_holds_only_its_share_of_the_data_threads(
    server: tuple[LayerServer, FsdClient], tmp_path: Path
) -> None:
    srv, client = server
    hung_files = {f"f{i}.bin": os.urandom(64 << 10) for i in range(24)}
    hung = _mount(client, tmp_path, "hung", hung_files, fetch_timeout_sec=3.0, min_fetch=0)
    other_files = {f"g{i}.bin": os.urandom(4 << 10) for i in range(4)}
    other = _mount(client, tmp_path, "other", other_files)
    ly = srv.layers[str(hung)]
    assert ly.fetcher is not None
    slow = Slow(ly.fetcher.source)
    ly.fetcher.source = slow  # type: ignore[assignment]
    errors: list[OSError] = []

    def read(path: Path) -> None:
        try:
            path.read_bytes()
        except OSError as e:
            errors.append(e)

    readers = [threading.Thread(target=read, args=(hung / f"f{i}.bin",), daemon=True) for i in range(20)]
    try:
        for t in readers:
            t.start()
        time.sleep(0.5)  # 20 reads in flight on the hung source
        took, data = _timed(lambda: (other / "g0.bin").read_bytes(), 20)
        assert data == other_files["g0.bin"]
        assert took <= 2.0, f"an uncached read of another layer took {took:.2f}s"  # unbounded before
        # The hung layer's reads queued beyond its share fail for it, within its fetch timeout.
        deadline = time.monotonic() + 10
        while len(errors) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(errors) >= 8 and not slow.release.is_set()
    finally:
        slow.release.set()
    for t in readers:
        t.join(30)
    assert (hung / "f0.bin").read_bytes() == hung_files["f0.bin"]  # served again once it answers


def test_layers_whose_index_builds_do_not_stall_the_others(
    server: tuple[LayerServer, FsdClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lazypull.fs import layer

    srv, client = server
    files = {f"d/f{i}": os.urandom(8 << 10) for i in range(40)}
    unrelated = _mount(client, tmp_path, "unrelated", files)
    deadline = time.monotonic() + 20
    while client.stats()["layers"][0]["index"] != "compact" and time.monotonic() < deadline:
        time.sleep(0.02)
    # Layers too large to be served from their parsed TOC, each build taking seconds.
    monkeypatch.setattr(layer, "PARSED_SERVES_UP_TO", 0)
    compact = spec_mod._compact

    def slow_compact(*args: Any, **kw: Any) -> Any:
        time.sleep(3.0)
        return compact(*args, **kw)

    monkeypatch.setattr(spec_mod, "_compact", slow_compact)
    big = [_mount(client, tmp_path, f"big{i}", {f"x{j}": b"x" * j for j in range(20)}) for i in range(5)]
    listings: dict[int, list[str]] = {}
    waiting = [
        threading.Thread(target=lambda i=i, mp=mp: listings.__setitem__(i, sorted(os.listdir(mp))), daemon=True)
        for i, mp in enumerate(big)
        for _ in range(2)
    ]
    for t in waiting:
        t.start()
    time.sleep(0.5)  # every reader thread would be waiting on a build by now
    assert not listings  # still building
    took, _ = _timed(lambda: [os.stat(unrelated / f"d/f{i}") for i in range(10)], 20)
    assert took <= 0.5, f"metadata of an unrelated layer stalled {took:.2f}s"  # 2.5 s and more before
    took, data = _timed(lambda: (unrelated / "d/f11").read_bytes(), 20)
    assert took <= 0.5 and data == files["d/f11"], f"a read of an unrelated layer stalled {took:.2f}s"
    for t in waiting:
        t.join(60)
    assert listings == {i: sorted(f"x{j}" for j in range(20)) for i in range(5)}  # answered once built
    assert srv.loop.parked == 0


def _prefetched_layer(where: Path, name: str, files: dict[str, bytes]) -> tuple[Path, dict[str, object]]:
    """A layer with a prefetch landmark (its first file is fetched at mount)."""
    where.mkdir(parents=True, exist_ok=True)
    return make_layer(where, name, files, prioritized=[next(iter(files))])


class _HungPrefetch:
    """The blobs under *where* hang on reads of their data (a prefetch), not of their tail (the TOC)."""

    def __init__(self, where: Path) -> None:
        self.where = str(where)
        self.release = threading.Event()

    def wrap(self, open_source: Callable[..., Any]) -> Callable[..., Any]:
        def opened(spec: Any, *args: Any, **kw: Any) -> Any:
            src = open_source(spec, *args, **kw)
            return _StallHead(src, self.release) if spec.blob_path.startswith(self.where) else src

        return opened


class _StallHead:
    def __init__(self, inner: Any, release: threading.Event) -> None:
        self.inner, self.release = inner, release

    @property
    def size(self) -> int:
        return int(self.inner.size)

    def read_at(self, offset: int, length: int) -> bytes:
        if offset + length < self.size:
            self.release.wait(30)
        return bytes(self.inner.read_at(offset, length))


def test_hung_prefetches_do_not_hold_up_another_images_container_create(
    server: tuple[LayerServer, FsdClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, client = server
    hung = _HungPrefetch(tmp_path / "hung")
    monkeypatch.setattr(spec_mod, "open_source", hung.wrap(spec_mod.open_source))
    try:
        hung_mps = []
        for image in ("a", "b"):  # two images of three layers each, on one hung registry
            for i in range(3):
                blob, desc = _prefetched_layer(tmp_path / "hung" / image, f"{image}{i}", {"p": b"p" * 1000})
                mp = tmp_path / f"m-{image}{i}"
                _, fd = client.mount({**spec(tmp_path, blob, desc), "prefetch": True}, mp, timeout=30)
                os.close(fd)
                hung_mps.append(mp)
        blob, desc = _prefetched_layer(tmp_path / "ok", "c", {"q": b"q" * 1000})
        mp_ok = tmp_path / "m-c"
        _, fd = client.mount({**spec(tmp_path, blob, desc), "prefetch": True}, mp_ok, timeout=30)
        os.close(fd)

        sn = Snapshotter(
            tmp_path / "sn",
            None,
            RemoteSettings(
                cache_dir=tmp_path / "cache", registry={}, prefetch_timeout_sec=4.0, fsd_address=socket_path(srv.root)
            ),
        )

        def chain(mps: list[Path]) -> list[Any]:
            return [_Snap(str(m)) for m in mps]

        took, _ = _timed(lambda: sn._wait_prefetch(chain([mp_ok])), 20)
        assert took <= 1.0, f"another image's create waited {took:.2f}s for its prefetch"  # 4 s (the timeout) before
        # An image stuck on the hung registry: its create waits once, then no more.
        took, _ = _timed(lambda: sn._wait_prefetch(chain(hung_mps[:3])), 20)
        assert 3.5 <= took <= 15
        for _ in range(3):
            took, _ = _timed(lambda: sn._wait_prefetch(chain(hung_mps[:3])), 20)
            assert took <= 0.5, f"a create waited {took:.2f}s again for prefetches that timed out"
        took, _ = _timed(lambda: sn._wait_prefetch(chain([mp_ok, hung_mps[0]])), 20)
        assert took <= 0.5  # a layer whose prefetch timed out is not waited for by any image
    finally:
        hung.release.set()
    deadline = time.monotonic() + 20
    while not all(r["prefetch_done"] for r in client.stats()["layers"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(r["prefetch_done"] for r in client.stats()["layers"])
    assert len(srv.layers) == 7


class _Snap:
    """What the prefetch wait reads of a snapshot."""

    def __init__(self, mountpoint: str) -> None:
        self.remote = {"mountpoint": mountpoint}


def _held(root: Path) -> tuple[int, int]:
    """(fds, mappings) of this process on index files under *root* (other tests' leftovers,
    freed whenever the collector runs, do not count)."""

    def ours(path: str) -> bool:
        return path.startswith(str(root)) and ".index.v1" in path

    fds = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds += ours(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    maps = sum(ours(line.split(maxsplit=5)[-1]) for line in Path("/proc/self/maps").read_text().splitlines())
    return fds, maps


def test_unmounting_layers_releases_their_index_files(server: tuple[LayerServer, FsdClient], tmp_path: Path) -> None:
    srv, client = server
    mps = [_mount(client, tmp_path, f"l{i}", {f"f{j}": b"y" * j for j in range(30)}) for i in range(12)]
    deadline = time.monotonic() + 30
    while {r["index"] for r in client.stats()["layers"]} != {"compact"} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {r["index"] for r in client.stats()["layers"]} == {"compact"}  # each served from its mapped file
    assert all((mp / "f3").read_bytes() == b"yyy" for mp in mps)
    assert _held(tmp_path) == (12, 12)
    for mp in mps:
        client.unmount(mp)
    assert srv.layers == {}
    assert _held(tmp_path) == (0, 0)  # 12 fds and 12 mappings stayed before


def test_the_cache_directory_is_made_again_if_it_goes(server: tuple[LayerServer, FsdClient], tmp_path: Path) -> None:
    srv, client = server
    files = {f"f{i}.bin": os.urandom(32 << 10) for i in range(4)}
    mp = _mount(client, tmp_path, "c", files, min_fetch=0)
    assert (mp / "f0.bin").read_bytes() == files["f0.bin"]
    [cache] = srv.caches.values()
    cache.flush()
    shutil.rmtree(tmp_path / "cache")
    assert (mp / "f2.bin").read_bytes() == files["f2.bin"]  # never read: fetched now
    cache.flush()
    cached = [f for f in (tmp_path / "cache").rglob("*") if f.is_file()]
    assert cached, "nothing was cached after the cache directory went"
    assert (os.stat(tmp_path / "cache").st_mode & 0o777) == 0o700


def _crafted(where: Path, name: str, entries: int) -> tuple[Path, dict[str, object]]:
    return write_blob(where, name, wide_layer(entries, name))


def test_a_crafted_image_is_held_to_the_index_memory_budget(
    server: tuple[LayerServer, FsdClient], tmp_path: Path
) -> None:
    srv, client = server
    entries = 20_000
    per_layer = estimate(0, entries)
    srv.index_memory = IndexMemory(total=3 * per_layer, per_image=2 * per_layer + (per_layer // 2))
    crafted = tmp_path / "crafted"  # one image: its layers' blobs in one directory
    crafted.mkdir()
    layers = [_crafted(crafted, f"l{i}", entries) for i in range(5)]
    errors: list[str] = []

    def mount(i: int) -> None:
        blob, desc = layers[i]
        try:
            _, fd = client.mount(spec(tmp_path, blob, desc), tmp_path / f"m{i}", timeout=120)
            os.close(fd)
        except Exception as e:
            errors.append(str(e))

    threads = [threading.Thread(target=mount, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    other = _mount(client, tmp_path, "other", {"x.txt": b"other image"})  # another image mounts meanwhile
    assert (other / "x.txt").read_bytes() == b"other image"
    for t in threads:
        t.join(120)
    assert errors == []
    for i in range(5):
        assert len(os.listdir(tmp_path / f"m{i}" / "d")) == entries - 1
    st = client.stats()["index_memory"]
    assert 0 < st["peak"] <= 2 * per_layer + per_layer // 2  # never more than the image's share at once
    assert st["refused"] == 0
    deadline = time.monotonic() + 30  # given back once each compact index serves
    while client.stats()["index_memory"]["in_use"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.stats()["index_memory"]["in_use"] == 0


def test_a_layer_over_the_image_limit_is_refused_with_a_clear_error(
    server: tuple[LayerServer, FsdClient], tmp_path: Path
) -> None:
    srv, client = server
    srv.index_memory = IndexMemory(total=64 << 20, per_image=estimate(0, 10_000))
    blob, desc = _crafted(tmp_path, "big", 30_000)
    with pytest.raises(Exception, match=r"needs about \d+ MB to build \(up to 3000\d entries.*image_index_memory"):
        client.mount(spec(tmp_path, blob, desc), tmp_path / "m", timeout=30)
    assert not os.path.ismount(tmp_path / "m")
    assert client.list() == []
    st = client.stats()["index_memory"]
    assert st["refused"] == 1 and st["in_use"] == 0
    small = _mount(client, tmp_path, "small", {"ok.txt": b"fine"})  # the server goes on
    assert (small / "ok.txt").read_bytes() == b"fine"


def test_a_layer_too_large_to_serve_parsed_is_indexed_by_a_process_of_its_own(
    server: tuple[LayerServer, FsdClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    _srv, client = server
    monkeypatch.setattr(spec_mod, "PARSED_SERVES_UP_TO", 1_000)  # (the real threshold: 200,000 entries)
    blob, desc = _crafted(tmp_path, "wide", 3_000)
    with caplog.at_level("INFO", logger="lazypull.fs.spec"):
        _, fd = client.mount(spec(tmp_path, blob, desc), tmp_path / "m", timeout=60)
    os.close(fd)
    assert any("built by a process of its own" in r.getMessage() for r in caplog.records)
    assert [r["index"] for r in client.stats()["layers"]] == ["compact"]  # served from the file at once
    names = os.listdir(tmp_path / "m" / "d")
    assert len(names) == 2_999 and os.stat(tmp_path / "m" / "d" / names[0]).st_size == 0
    assert client.stats()["index_memory"]["in_use"] == 0


def test_a_bad_toc_built_apart_fails_its_mount_with_the_reason(
    server: tuple[LayerServer, FsdClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _srv, client = server
    monkeypatch.setattr(spec_mod, "PARSED_SERVES_UP_TO", 10)
    c = CraftedLayer()
    for n in range(20):
        c.add(name=f"f{n}", type="reg", size=0)
    c.add(name="../escape", type="reg", size=0)  # checked in the child as anywhere
    path, desc = write_blob(tmp_path, "bad", c)
    with pytest.raises(Exception, match=r"\.\./escape|outside|escape"):
        client.mount(spec(tmp_path, path, desc), tmp_path / "m", timeout=60)
    assert client.list() == [] and client.stats()["index_memory"]["in_use"] == 0


def test_nothing_keeps_an_unmounted_layers_index_alive(server: tuple[LayerServer, FsdClient], tmp_path: Path) -> None:
    """Neither finished builds nor idle reader and worker threads hold a layer (its parsed or
    compact index) once it is unmounted: its memory goes."""
    import gc
    import weakref

    srv, client = server
    held: list[weakref.ref[object]] = []
    for i in range(3):
        mp = _mount(client, tmp_path, f"l{i}", {f"f{n}-{i}.txt": b"x" * n for n in range(50)})
        fs = srv.layers[str(mp)].fs
        assert fs is not None
        held += [weakref.ref(fs), weakref.ref(fs.index)]  # the parsed index while its build waits
        assert (mp / f"f7-{i}.txt").read_bytes() == b"x" * 7 and len(os.listdir(mp)) == 50
        assert fs.wait_built(60)  # its compact index built (deferred while the parsed one serves)
        assert (mp / f"f9-{i}.txt").read_bytes() == b"x" * 9
        del fs
    for r in client.list():
        client.unmount(Path(r["mountpoint"]), free_cache=True)
    deadline = time.monotonic() + 10  # the reader threads' poll() times out: their locals go
    while any(r() is not None for r in held) and time.monotonic() < deadline:
        time.sleep(0.2)
        gc.collect()
    alive = [r() for r in held if r() is not None]
    assert alive == [], [(type(o).__name__, [type(x).__name__ for x in gc.get_referrers(o)]) for o in alive]


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS")


def test_rounds_of_a_crafted_image_leave_the_real_servers_memory_where_it_was(tmp_path: Path) -> None:
    """A real lazypull-fsd: rounds of a crafted image (layers of 250,000 entries, indexed by a
    process of their own) mounted at once, listed and unmounted leave its RSS within 10% of
    what it was with another layer mounted and read. Before (arenas and glibc's moving
    thresholds, a listing built as a list of 250,000 tuples) each round left 20-50 MB more."""
    import subprocess
    import sys

    from tests.support.processes import kill_layer_servers

    crafted = tmp_path / "crafted"
    crafted.mkdir()
    layers = [_crafted(crafted, f"l{i}", 250_000) for i in range(3)]
    root = tmp_path / "fsd"
    cmd = [sys.executable, "-m", "lazypull.service.fsd", "--root", str(root), "--log-level", "warning"]
    srv = subprocess.Popen(cmd, start_new_session=True)
    try:
        client = FsdClient(socket_path(root))
        deadline = time.monotonic() + 30
        while client.alive() is None:
            assert time.monotonic() < deadline and srv.poll() is None
            time.sleep(0.05)
        files = {f"f{i}.bin": os.urandom(64 << 10) for i in range(50)}
        other = _mount(client, tmp_path, "other", files)
        for name, data in files.items():
            assert (other / name).read_bytes() == data
        time.sleep(0.5)
        base = _rss(srv.pid)
        after = []
        for r in range(2):
            errors: list[str] = []

            def mount(i: int, r: int = r, errors: list[str] = errors) -> None:
                blob, desc = layers[i]
                try:
                    _, fd = client.mount(spec(tmp_path, blob, desc), tmp_path / f"m{r}-{i}", timeout=120)
                    os.close(fd)
                except Exception as e:
                    errors.append(str(e))

            threads = [threading.Thread(target=mount, args=(i,)) for i in range(len(layers))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert errors == []
            for i in range(len(layers)):
                assert len(os.listdir(tmp_path / f"m{r}-{i}" / "d")) == 249_999
                client.unmount(tmp_path / f"m{r}-{i}", free_cache=True)
            assert (other / "f0.bin").read_bytes() == files["f0.bin"]
            time.sleep(0.5)
            after.append(_rss(srv.pid))
        assert max(after) <= base * 1.10, f"RSS {base >> 20} MB, after each round {[a >> 20 for a in after]} MB"
    finally:
        with contextlib.suppress(Exception):
            FsdClient(socket_path(root)).shutdown(unmount_all=True)
        try:
            srv.wait(30)
        except subprocess.TimeoutExpired:
            kill_layer_servers(root)
        for mp in tmp_path.glob("m*"):
            if os.path.ismount(mp):
                subprocess.run(["umount", "-l", str(mp)], check=False)
