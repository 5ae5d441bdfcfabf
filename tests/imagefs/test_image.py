"""The image API over real layouts and a real registry, in every layer format."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import os
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import lazypull
from lazypull.convert.copy import copy_image
from lazypull.convert.unpack import unpack_image
from lazypull.errors import (
    ImageFileNotFoundError,
    ImageIsADirectoryError,
    ImageNotADirectoryError,
    ImageNotAFileError,
    ImageSymlinkLoopError,
    LazypullError,
    RegistryError,
)
from lazypull.imagefs import ImageFS, StreamedLayerWarning, open_image, register_index_finder
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.layout import OCILayout
from lazypull.oci.types import Descriptor, Index
from lazypull.registry.options import RegistryOptions
from lazypull.registry.stores import open_store
from tests.imagefs.helpers import BIG, build
from tests.support.images import Entry
from tests.support.registry import Registry, start_registry

pytestmark = pytest.mark.filterwarnings("ignore::lazypull.imagefs.StreamedLayerWarning")

FORMATS = ["estargz", "zstdchunked", "gzip"]


@pytest.fixture(params=FORMATS)
def image(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ImageFS]:
    ref = build(tmp_path, request.param)
    with open_image(ref, cache_dir=tmp_path / "cache") as img:
        yield img


def test_merged_view_applies_whiteouts_opaque_dirs_and_upper_layers(image: ImageFS) -> None:
    top = ["abs", "bin", "dangling", "data", "dev", "escape", "etc", "loop1", "loop2", "opt", "updir", "usr", "var"]
    assert image.ls("/") == [*top, "was-dir", "was-file"]
    assert image.ls("etc") == ["hosts", "hosts.lnk", "os-release", "passwd", "sym"]  # .wh.old removed old
    assert not image.exists("etc/old")
    assert image.ls("var/cache") == ["b"]  # opaque: the lower a and sub/ are gone
    assert not image.exists("var/cache/sub/deep")
    assert image.read_bytes("etc/passwd") == b"root:x:0:0:root:/root:/bin/sh\n"  # upper wins
    assert image.read_bytes("opt/keep") == b"replaced"
    assert image.stat("opt").mode & 0o777 == 0o700  # the lower directory's entry is the only one
    assert image.read_bytes("was-dir") == b"now a file"  # a file hides the lower directory
    assert not image.exists("was-dir/child")
    assert image.ls("was-file") == ["inside"]
    assert image.stat("var/cache").mode & 0o777 == 0o750
    for hidden in (".wh.old", "etc/.wh.old", "var/cache/.wh..wh..opq"):
        assert not image.exists(hidden)


def test_merged_view_matches_unpack(image: ImageFS, tmp_path: Path) -> None:
    """The merged view equals the rootfs lazypull unpack materialises (types, modes, contents)."""
    rootfs = tmp_path / "rootfs"
    unpack_image(image.store, rootfs)
    seen = {}
    for dirpath, dirs, files in image.walk("/"):
        for name in dirs + files:
            p = f"{dirpath.rstrip('/')}/{name}".lstrip("/")
            info = image.stat(p, follow_symlinks=False)
            seen[p] = (info.type, info.mode & 0o7777 if info.type != "symlink" else 0, info.uid)
            if info.is_file:
                assert image.read_bytes(p) == (rootfs / p).read_bytes(), p
            if info.is_symlink:
                assert image.readlink(p) == os.readlink(rootfs / p)
    expect = {}
    for dirpath, dirs, files in os.walk(rootfs):
        for name in dirs + files:
            full = Path(dirpath, name)
            p = str(full.relative_to(rootfs))
            st = full.lstat()
            kind = {
                stat.S_IFDIR: "directory",
                stat.S_IFREG: "file",
                stat.S_IFLNK: "symlink",
                stat.S_IFCHR: "char",
            }[stat.S_IFMT(st.st_mode)]
            expect[p] = (kind, stat.S_IMODE(st.st_mode) if kind != "symlink" else 0, st.st_uid)
    assert seen == expect


def test_symlinks_resolve_inside_the_image(image: ImageFS) -> None:
    assert image.read_text("etc/sym") == "127.0.0.1 localhost\n"
    assert image.read_text("abs") == "127.0.0.1 localhost\n"
    assert image.read_text("escape") == "root:x:0:0:root:/root:/bin/sh\n"  # '..' stops at the root
    assert image.read_text("/../../etc/../etc/passwd").startswith("root:")
    assert image.ls("updir") == image.ls("etc")
    assert image.realpath("updir/sym") == "/etc/hosts"
    assert image.read_text("bin/tool").endswith("echo tool\n")  # a symlinked directory
    assert image.readlink("escape") == "../../../../etc/passwd"
    info = image.stat("abs", follow_symlinks=False)
    assert info.is_symlink and info.link_target == "/etc/hosts" and info.size == len("/etc/hosts")
    assert image.stat("abs").is_file and image.stat("abs").size == 20
    assert not image.exists("dangling") and image.stat("dangling", follow_symlinks=False).is_symlink
    with pytest.raises(ImageSymlinkLoopError) as e:
        image.read_bytes("loop1")
    assert e.value.errno == errno.ELOOP and isinstance(e.value, OSError)


def test_hardlinks_devices_and_metadata(image: ImageFS) -> None:
    assert image.read_bytes("etc/hosts.lnk") == image.read_bytes("etc/hosts")
    h = image.stat("etc/hosts")
    assert (h.uid, h.gid, h.mode, h.mtime) == (1000, 1000, stat.S_IFREG | 0o640, 1_600_000_000.0)
    assert h.layer == image.layers[1].digest
    assert image.stat("etc/os-release").layer == image.layers[0].digest
    assert image.stat("dev/null").type == "char"
    big = image.stat("data/big.bin")
    assert big.size == len(BIG) and big.mode & 0o777 == 0o600
    if big.digest:
        assert big.digest == "sha256:" + hashlib.sha256(BIG).hexdigest()


def test_errors_are_lazypull_errors_and_os_errors(image: ImageFS) -> None:
    cases = [
        (lambda: image.read_bytes("etc/nope"), ImageFileNotFoundError, FileNotFoundError),
        (lambda: image.ls("etc/passwd"), ImageNotADirectoryError, NotADirectoryError),
        (lambda: image.stat("etc/passwd/x"), ImageNotADirectoryError, NotADirectoryError),
        (lambda: image.read_bytes("etc"), ImageIsADirectoryError, IsADirectoryError),
        (lambda: image.open("dev/null"), ImageNotAFileError, OSError),
        (lambda: image.readlink("etc/passwd"), ImageNotAFileError, OSError),
    ]
    for call, ours, builtin in cases:
        with pytest.raises(ours) as e:
            call()
        assert isinstance(e.value, builtin) and isinstance(e.value, LazypullError)
        assert "\n" not in str(e.value) and image.ref in str(e.value)


def test_open_is_binary_seekable_and_supports_readinto(image: ImageFS) -> None:
    with image.open("data/big.bin") as f:
        assert f.seekable() and f.readable() and f.name == "/data/big.bin"
        assert f.read(10) == BIG[:10]
        f.seek(1_000_000)
        buf = bytearray(300_000)
        assert f.readinto(buf) == 300_000 and bytes(buf) == BIG[1_000_000:1_300_000]
        assert f.tell() == 1_300_000
        f.seek(-5, io.SEEK_END)
        assert f.read() == BIG[-5:]
        assert f.read() == b""
        f.seek(len(BIG) + 10)
        assert f.read(3) == b""
        f.seek(0)
        assert f.read() == BIG
    assert f.closed
    with pytest.raises(ValueError):
        f.read(1)


def test_config_manifest_and_stats(image: ImageFS) -> None:
    assert image.config["config"]["Cmd"] == ["/bin/sh"]
    assert len(image.config["rootfs"]["diff_ids"]) == len(image.layers) == 2
    assert image.manifest.layers == image.layers
    assert image.digest.startswith("sha256:")
    assert image.size == sum(d.size for d in image.layers)


def test_lazy_layers_fetch_only_what_is_read(tmp_path: Path) -> None:
    layers = [[Entry("data", "dir"), *(Entry(f"data/f{i}", data=os.urandom(500_000)) for i in range(8))]]
    with open_image(build(tmp_path, "estargz", layers), cache_dir=tmp_path / "cache") as img:
        assert len(img.read_bytes("data/f3")) == 500_000
        st = img.stats()
        assert st.layers_opened == 1
        assert 500_000 < st.bytes_fetched < 2 * 500_000 + 100_000 < st.image_bytes / 2


def test_upper_layers_answer_without_opening_lower_ones(tmp_path: Path) -> None:
    with open_image(build(tmp_path, "estargz"), cache_dir=tmp_path / "cache") as img:
        assert img.read_bytes("etc/hosts").startswith(b"127.0.0.1")
        assert img.stats().layers_opened == 1
        img.read_bytes("data/big.bin")
        assert img.stats().layers_opened == 2


def test_second_read_comes_from_the_cache(tmp_path: Path) -> None:
    ref = build(tmp_path, "estargz")
    with open_image(ref, cache_dir=tmp_path / "cache") as img:
        img.read_bytes("data/big.bin")
    with open_image(ref, cache_dir=tmp_path / "cache") as again:
        before = again.stats().bytes_fetched  # nothing opened yet
        assert again.read_bytes("data/big.bin") == BIG
        index_only = again.stats().bytes_fetched - before
        assert index_only < 50_000  # footer and TOC; chunks are cached


def test_gzip_layers_are_streamed_with_a_warning_and_verified(tmp_path: Path) -> None:
    ref = build(tmp_path, "gzip")
    with open_image(ref, cache_dir=tmp_path / "cache") as img, pytest.warns(StreamedLayerWarning, match="no index"):
        assert img.read_bytes("etc/hosts").startswith(b"127.0.0.1")
    # A tampered layer: same size, one byte changed; nothing of it may be served.
    layout = OCILayout.from_ref(ref)
    top = img.layers[1]
    blob = layout.blob_path(top.digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with open_image(ref, cache_dir=tmp_path / "cache") as bad, pytest.raises(LazypullError):
        bad.read_bytes("etc/hosts")


def test_tampered_chunk_is_never_served(tmp_path: Path) -> None:
    ref = build(tmp_path, "estargz")
    with open_image(ref, cache_dir=tmp_path / "cache") as img:
        desc = img.layers[0]
    layout = OCILayout.from_ref(ref)
    blob = layout.blob_path(desc.digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside big.bin's compressed chunks
    blob.write_bytes(bytes(data))
    with open_image(ref, cache_dir=tmp_path / "other-cache") as bad, pytest.raises(LazypullError):
        bad.read_bytes("data/big.bin")


def test_thread_safe_and_usable_from_asyncio(tmp_path: Path) -> None:
    layers = [[Entry("d", "dir"), *(Entry(f"d/f{i}", data=os.urandom(200_000 + i)) for i in range(16))]]
    ref = build(tmp_path, "estargz", layers)
    expect = {f"d/f{i}": e.data for i, e in enumerate(layers[0][1:])}
    with open_image(ref, cache_dir=tmp_path / "cache") as img:
        barrier = threading.Barrier(8)

        def read(path: str) -> bytes:
            if int(path[3:]) < 8:  # the first eight start together
                barrier.wait(timeout=30)
            return img.read_bytes(path)

        with ThreadPoolExecutor(8) as pool:
            got = dict(zip(expect, pool.map(read, list(expect)), strict=True))
        assert got == expect

    async def main() -> dict[str, bytes]:
        img2 = await asyncio.to_thread(open_image, ref, cache_dir=tmp_path / "cache2")
        try:
            datas = await asyncio.gather(*(asyncio.to_thread(img2.read_bytes, p) for p in expect))
            listing = await asyncio.to_thread(img2.ls, "d")
            assert len(listing) == 16
            return dict(zip(expect, datas, strict=True))
        finally:
            img2.close()

    assert asyncio.run(main()) == expect


def test_registry_image_and_options(registry: Registry, tmp_path: Path) -> None:
    ref = build(tmp_path, "estargz")
    target = f"{registry.host}/api/app:v1"
    copy_image(OCILayout.from_ref(ref), open_store(target, RegistryOptions(plain_http=True), for_push=True), tag="v1")
    with open_image(target, plain_http=True, cache_dir=tmp_path / "cache") as img:
        assert img.read_text("etc/os-release").startswith("ID=debian")
        assert img.ref == target
        by_digest = f"{registry.host}/api/app@{img.digest}"
    with open_image(by_digest, plain_http=True, cache_dir=tmp_path / "cache") as img:
        assert img.ls("var/cache") == ["b"]
    with pytest.raises(RegistryError):
        open_image(f"{registry.host}/api/missing:v1", plain_http=True, cache_dir=tmp_path / "cache")


@pytest.fixture
def htpasswd_registry(tmp_path: Path) -> Iterator[Registry]:
    reg = start_registry(tmp_path / "reg", users={"alice": "s3cret-pw"})
    try:
        yield reg
    finally:
        reg.stop()


def test_registry_with_basic_auth(htpasswd_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAZYPULL_USER", raising=False)
    ref = build(tmp_path, "zstdchunked")
    target = f"{htpasswd_registry.host}/private/app:v1"
    push = RegistryOptions(plain_http=True, user="alice:s3cret-pw")
    copy_image(OCILayout.from_ref(ref), open_store(target, push, for_push=True), tag="v1")
    with pytest.raises(RegistryError) as e:
        open_image(target, plain_http=True, cache_dir=tmp_path / "cache")
    assert "s3cret" not in str(e.value)
    with pytest.raises(RegistryError) as e:
        open_image(target, plain_http=True, user="alice:wrong", cache_dir=tmp_path / "cache")
    assert "wrong" not in str(e.value)
    with open_image(target, plain_http=True, user="alice:s3cret-pw", cache_dir=tmp_path / "cache") as img:
        assert img.read_bytes("data/big.bin") == BIG
    monkeypatch.setenv("LAZYPULL_USER", "alice:s3cret-pw")  # as for the CLI
    with open_image(target, plain_http=True, cache_dir=tmp_path / "cache") as img:
        assert img.read_bytes("etc/hosts.lnk") == b"127.0.0.1 localhost\n"


def test_platform_is_chosen_from_an_index(tmp_path: Path) -> None:
    ref = build(tmp_path, "estargz")
    layout = OCILayout.from_ref(ref)
    mdesc = layout.resolve()
    index = Index(manifests=[mdesc]).to_bytes()
    layout.push_manifest(Descriptor(mt.OCI_INDEX, digestlib.of_bytes(index), len(index)), index, tag="multi")
    multi = f"oci:{layout.root}:multi"
    with open_image(multi, cache_dir=tmp_path / "cache") as img:
        assert img.digest == mdesc.digest and img.read_bytes("opt/keep") == b"replaced"
    with open_image(multi, platform=str(mdesc.platform), cache_dir=tmp_path / "cache") as img:
        assert img.digest == mdesc.digest
    with pytest.raises(LazypullError, match="no manifest for platform linux/s390x"):
        open_image(multi, platform="linux/s390x", cache_dir=tmp_path / "cache")
    with pytest.raises(LazypullError, match="invalid platform"):
        open_image(multi, platform="linux", cache_dir=tmp_path / "cache")


def test_pluggable_index_finder_sees_every_layer(tmp_path: Path) -> None:
    seen: list[str] = []

    def finder(store: object, manifest: object, layer: object, source: object) -> None:
        seen.append(layer.digest)  # type: ignore[attr-defined]
        return None

    register_index_finder(finder)
    try:
        with open_image(build(tmp_path, "gzip"), cache_dir=tmp_path / "cache") as img:
            img.ls("/")
            assert seen == [d.digest for d in reversed(img.layers)]
    finally:
        from lazypull.imagefs import layers

        layers._FINDERS.remove(finder)


def test_bad_references_are_one_line_errors(tmp_path: Path) -> None:
    for ref in ("oci:" + str(tmp_path / "nothing") + ":x", "UPPER/case:tag", ""):
        with pytest.raises(LazypullError) as e:
            open_image(ref, cache_dir=tmp_path / "cache")
        assert "\n" not in str(e.value)


def test_package_level_reexport() -> None:
    assert lazypull.open_image is open_image
    with pytest.raises(AttributeError):
        lazypull.no_such_name  # noqa: B018


def test_a_streamed_layer_is_downloaded_once_by_concurrent_readers(tmp_path: Path) -> None:
    layers = [[Entry("d", "dir"), *(Entry(f"d/f{i}", data=os.urandom(50_000 + i)) for i in range(8))]]
    expect = {f"d/f{i}": e.data for i, e in enumerate(layers[0][1:])}
    with open_image(build(tmp_path, "gzip", layers), cache_dir=tmp_path / "cache") as img:
        barrier = threading.Barrier(8)

        def read(path: str) -> bytes:
            barrier.wait(timeout=30)
            return img.read_bytes(path)

        with ThreadPoolExecutor(8) as pool:
            assert dict(zip(expect, pool.map(read, list(expect)), strict=True)) == expect
        assert img.stats().bytes_fetched == img.size  # one pass over the blob, not eight
