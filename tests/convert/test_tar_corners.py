"""Layer tars as other tools write them: every case is converted, checked, and its three
views compared (original unpacked == conversion unpacked == conversion mounted lazily)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.convert.image import ConvertOptions, convert_image
from lazypull.errors import FormatError
from lazypull.format.estargz_writer import tar_header, toc_entry_for
from lazypull.format.tarstream import iter_members
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.layout import OCILayout
from lazypull.oci.types import Descriptor, Manifest
from tests.support.images import Entry, make_tar
from tests.support.layouts import gnu_tar, raw_image, three_views

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BASE = [
    Entry("bin", "dir", mode=0o755),
    Entry("bin/tool", data=b"#!/bin/sh\necho tool\n" * 50, mode=0o755, uid=5, gid=6),
    Entry("etc", "dir", mode=0o755),
    Entry("etc/keep", data=b"keep"),
    Entry("srv", "dir", mode=0o755),
    Entry("srv/old", data=b"old tree"),
    Entry("var", "dir", mode=0o755),
    Entry("var/opq", "dir", mode=0o755),
    Entry("var/opq/lower", data=b"lower"),
]


# Upper layers list their parent directories, as every image builder writes them (a layer
# without them gets implicit 0755 parents in its lazy view, which mask the lower metadata).
ETC = Entry("etc", "dir", mode=0o755)


def _same(views: tuple[dict[str, tuple[object, ...]], ...]) -> dict[str, tuple[object, ...]]:
    orig, conv, mnt = views
    assert conv == orig
    assert mnt == orig
    return orig


@pytest.mark.parametrize("media_type", [mt.OCI_LAYER, mt.OCI_LAYER_ZSTD, mt.OCI_LAYER_GZIP])
def test_uncompressed_and_zstd_source_layers(media_type: str, tmp_path: Path) -> None:
    raw_image(
        tmp_path / "src", [(make_tar(BASE), media_type), (make_tar([ETC, Entry("etc/top", data=b"t")]), media_type)]
    )
    tree = _same(three_views(f"oci:{tmp_path / 'src'}:latest", tmp_path))
    assert "etc/top" in tree and "bin/tool" in tree


def test_empty_layers(tmp_path: Path) -> None:
    empty = make_tar([])  # only the end-of-archive blocks, as buildah writes for ENV/LABEL steps
    raw_image(
        tmp_path / "src", [(make_tar(BASE), mt.OCI_LAYER_GZIP), (empty, mt.OCI_LAYER_GZIP), (empty, mt.OCI_LAYER)]
    )
    _same(three_views(f"oci:{tmp_path / 'src'}:latest", tmp_path))


def _sparse_dir(root: Path) -> Path:
    d = root / "sparse-src"
    (d / "data").mkdir(parents=True)
    with open(d / "data/holes.img", "wb") as f:
        f.truncate(3 << 20)
        f.seek(1 << 20)
        f.write(b"middle")
        f.seek((3 << 20) - 3)
        f.write(b"end")
    (d / "data/plain").write_bytes(b"plain")
    return d


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_gnu_sparse_files(fmt: str, tmp_path: Path) -> None:
    tar = gnu_tar(_sparse_dir(tmp_path), "--sparse", f"--format={fmt}")
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        assert tf.getmember("./data/holes.img").issparse()
    raw_image(tmp_path / "src", [(make_tar(BASE), mt.OCI_LAYER_GZIP), (tar, mt.OCI_LAYER)])
    tree = _same(three_views(f"oci:{tmp_path / 'src'}:latest", tmp_path))
    assert "data/holes.img" in tree


def test_pax_global_headers(tmp_path: Path) -> None:
    """``git archive`` output starts with a global header carrying the commit id."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("hi\n")
    (repo / "sub").mkdir()
    (repo / "sub/file").write_text("x\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    tar = subprocess.run([*git, "archive", "--format=tar", "HEAD"], check=True, capture_output=True).stdout
    assert tar[156:157] == b"g"  # the first header is a PAX global header
    raw_image(tmp_path / "src", [(make_tar(BASE), mt.OCI_LAYER_GZIP), (tar, mt.OCI_LAYER)])
    tree = _same(three_views(f"oci:{tmp_path / 'src'}:latest", tmp_path))
    assert "sub/file" in tree and "pax_global_header" not in tree


def test_gnu_long_names_and_long_link_names(tmp_path: Path) -> None:
    d = tmp_path / "long"
    deep = d / ("d" * 120) / ("e" * 120)
    deep.mkdir(parents=True)
    name = deep / ("f" * 200)
    name.write_bytes(b"long")
    os.symlink("../" * 3 + "t" * 180, deep / "sym")
    os.link(name, deep / ("h" * 150))
    tar = gnu_tar(d, "--format=gnu")
    assert b"././@LongLink" in tar
    raw_image(tmp_path / "src", [(make_tar(BASE), mt.OCI_LAYER_GZIP), (tar, mt.OCI_LAYER)])
    tree = _same(three_views(f"oci:{tmp_path / 'src'}:latest", tmp_path))
    assert any(k.endswith("f" * 200) for k in tree)


def test_names_that_are_not_utf8_keep_the_layer_plain(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "latin1"
    d.mkdir()
    (d / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name")
    (d / "ascii").write_bytes(b"a")
    tar = gnu_tar(d, "--format=gnu")
    raw_image(tmp_path / "src", [(make_tar(BASE), mt.OCI_LAYER_GZIP), (tar, mt.OCI_LAYER_GZIP)])
    out = f"oci:{tmp_path / 'c'}:x"
    assert main(["convert", f"oci:{tmp_path / 'src'}:latest", out]) == 0
    assert "is not UTF-8" in caplog.text and "kept as a plain layer" in caplog.text
    layout = OCILayout(tmp_path / "c", "x")
    m = Manifest.parse(layout.fetch(layout.resolve()))
    assert mt.ANNOTATION_TOC_DIGEST in m.layers[0].annotations
    assert mt.ANNOTATION_TOC_DIGEST not in m.layers[1].annotations
    assert main(["check", "--full", out]) == 3  # verified; the plain layer is pulled in full
    assert main(["unpack", out, str(tmp_path / "u")]) == 0
    assert (tmp_path / "u" / os.fsdecode(b"caf\xe9")).read_bytes() == b"latin-1 name"


def test_files_over_8_gib_use_base256_sizes(tmp_path: Path) -> None:
    """A 9 GiB sparse file: the source header needs base-256 (or PAX) sizes; the entry and the
    rewritten header carry the exact size. Only the headers are built: hashing 9 GiB of
    content would take minutes on a test machine."""
    d = tmp_path / "huge"
    d.mkdir()
    size = (9 << 30) + 5
    with open(d / "big", "wb") as f:
        f.truncate(size)
    for fmt in ("gnu", "pax"):
        tar = gnu_tar(d, "--sparse", f"--format={fmt}")
        assert len(tar) < 1 << 20
        members, _ = iter_members(io.BytesIO(tar))
        sizes = {}
        for ti, payload in members:
            if ti.isreg():
                assert payload is not None and payload.read(1 << 16) == bytes(1 << 16)
                sizes[ti.name] = (toc_entry_for(ti).size, ti.type, _header_size(tar_header(ti)))
        assert sizes["./big"] == (size, tarfile.REGTYPE, size)


def _header_size(header: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(header + bytes(-len(header) % 512) + bytes(1024)), mode="r|") as tf:
        ti = tf.next()
        assert ti is not None
        return ti.size


def test_hardlinks_to_files_of_a_lower_layer(tmp_path: Path) -> None:
    upper = [
        Entry("bin", "dir", mode=0o755),
        ETC,
        Entry("bin/tool2", "hardlink", link="bin/tool"),
        Entry("bin/tool3", "hardlink", link="./bin/tool"),
        Entry("etc/keep2", "hardlink", link="etc/keep"),
    ]
    raw_image(tmp_path / "src", [(make_tar(BASE), mt.OCI_LAYER_GZIP), (make_tar(upper), mt.OCI_LAYER_GZIP)])
    tree = _same(three_views(f"oci:{tmp_path / 'src'}:latest", tmp_path))
    assert tree["bin/tool2"][3] == tree["bin/tool"][3]  # one hardlink group, as overlayfs leaves it


def test_hardlink_to_a_file_no_layer_has_is_a_clear_error(tmp_path: Path) -> None:
    raw_image(
        tmp_path / "src",
        [(make_tar(BASE), mt.OCI_LAYER_GZIP), (make_tar([Entry("x", "hardlink", link="nope")]), mt.OCI_LAYER)],
    )
    opts = ConvertOptions()
    with pytest.raises(FormatError, match="no lower layer holds"):
        convert_image(OCILayout(tmp_path / "src", "latest"), OCILayout(tmp_path / "c", create=True), opts)


def test_whole_directory_whiteout_and_opaque_directory_recreated_in_the_same_layer(tmp_path: Path) -> None:
    upper = [
        Entry("srv", "dir", mode=0o755),
        Entry("var", "dir", mode=0o755),
        Entry("srv/.wh.old"),  # whiteout of a whole lower directory...
        Entry("srv/old", "dir", mode=0o700),  # ...recreated in the same layer
        Entry("srv/old/new", data=b"new"),
        Entry("var/opq", "dir", mode=0o750),
        Entry("var/opq/.wh..wh..opq"),
        Entry("var/opq/fresh", data=b"fresh"),
    ]
    lower = [e for e in BASE if e.name != "srv/old"] + [Entry("srv/old", "dir"), Entry("srv/old/gone", data=b"gone")]
    raw_image(tmp_path / "src", [(make_tar(lower), mt.OCI_LAYER_GZIP), (make_tar(upper), mt.OCI_LAYER_GZIP)])
    tree = _same(three_views(f"oci:{tmp_path / 'src'}:latest", tmp_path))
    assert "srv/old/new" in tree and "srv/old/gone" not in tree
    assert "var/opq/fresh" in tree and "var/opq/lower" not in tree


def test_foreign_layers_are_kept_and_never_fetched(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    layout = raw_image(tmp_path / "src", [(make_tar(BASE), mt.OCI_LAYER_GZIP)])
    m = Manifest.parse(layout.fetch(layout.resolve()))
    foreign = Descriptor(
        mt.DOCKER_LAYER_FOREIGN_GZIP, digestlib.of_bytes(b"not here"), 8, urls=("http://127.0.0.1:9/never",)
    )
    m.layers.insert(0, foreign)
    cfg = json.loads(layout.fetch(m.config))
    cfg["rootfs"]["diff_ids"].insert(0, digestlib.of_bytes(b"not here either"))
    cfg_bytes = json.dumps(cfg).encode()
    m.config = Descriptor(mt.OCI_CONFIG, digestlib.of_bytes(cfg_bytes), len(cfg_bytes))
    layout.push_bytes(m.config, cfg_bytes)
    data = m.to_bytes()
    layout.push_manifest(Descriptor(mt.OCI_MANIFEST, digestlib.of_bytes(data), len(data)), data, tag="latest")
    src = f"oci:{tmp_path / 'src'}:latest"
    assert main(["convert", src, f"oci:{tmp_path / 'c'}:x"]) == 0  # the blob is absent: any fetch would fail
    assert "non-distributable" in caplog.text and "http://127.0.0.1:9/never" in caplog.text
    out = OCILayout(tmp_path / "c", "x")
    om = Manifest.parse(out.fetch(out.resolve()))
    assert om.layers[0] == foreign and not out.has_blob(foreign)
    assert mt.ANNOTATION_TOC_DIGEST in om.layers[1].annotations
    assert main(["check", "--full", f"oci:{tmp_path / 'c'}:x"]) == 0
    assert main(["copy", src, f"oci:{tmp_path / 'cp'}:x"]) == 0
    assert not OCILayout(tmp_path / "cp").has_blob(foreign)


def test_one_layer_shared_by_several_images(tmp_path: Path) -> None:
    base = (make_tar(BASE), mt.OCI_LAYER_GZIP)
    raw_image(tmp_path / "a", [base, (make_tar([ETC, Entry("etc/a", data=b"a")]), mt.OCI_LAYER_GZIP)])
    raw_image(tmp_path / "b", [base, (make_tar([ETC, Entry("etc/b", data=b"b")]), mt.OCI_LAYER_GZIP)])
    dst = f"oci:{tmp_path / 'out'}"
    assert main(["convert", f"oci:{tmp_path / 'a'}:latest", f"{dst}:a"]) == 0
    assert main(["convert", f"oci:{tmp_path / 'b'}:latest", f"{dst}:b"]) == 0
    la, lb = (
        Manifest.parse(OCILayout(tmp_path / "out", t).fetch(OCILayout(tmp_path / "out", t).resolve())) for t in "ab"
    )
    assert la.layers[0] == lb.layers[0] and la.layers[1] != lb.layers[1]
    for t in "ab":
        assert main(["check", "--full", f"{dst}:{t}"]) == 0
