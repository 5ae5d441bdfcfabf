from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.convert.check import check_image
from lazypull.convert.image import ConvertOptions, convert_image
from lazypull.convert.priority import PrefetchProfile, read_record
from lazypull.convert.unpack import UnsafePathError, unpack_image
from lazypull.errors import FormatError, LazypullError
from lazypull.format import BytesSource, open_estargz
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.layout import OCILayout
from lazypull.oci.types import Descriptor, ImageConfig, Index, Manifest, Platform
from tests.support.images import Entry, write_image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def layers() -> list[list[Entry]]:
    return [
        [
            Entry("etc", "dir", mode=0o755),
            Entry("etc/passwd", data=b"root:x:0:0\n"),
            Entry("etc/old", data=b"old"),
            Entry("var", "dir"),
            Entry("var/cache", "dir"),
            Entry("var/cache/a", data=b"lower a"),
            Entry("big", data=os.urandom(300_000), mode=0o755),
        ],
        [
            Entry("etc/.wh.old"),
            Entry("var/cache", "dir"),
            Entry("var/cache/.wh..wh..opq"),
            Entry("var/cache/b", data=b"upper b"),
            Entry("etc/hosts", data=b"127.0.0.1 localhost\n", uid=1000, gid=1000),
            Entry("etc/hosts.lnk", "hardlink", link="etc/hosts"),
            Entry("etc/sym", "symlink", link="hosts"),
        ],
    ]


def convert(tmp_path: Path, src_ref: str, dst_ref: str, **kw: object) -> Descriptor:
    src = OCILayout.from_ref(src_ref)
    dst = OCILayout.from_ref(dst_ref, create=True)
    return convert_image(src, dst, ConvertOptions(**kw), tag=dst.tag)  # type: ignore[arg-type]


def load(ref: str) -> tuple[OCILayout, Manifest, ImageConfig]:
    lay = OCILayout.from_ref(ref)
    d = lay.resolve()
    m = Manifest.parse(lay.fetch(d), d.media_type)
    return lay, m, ImageConfig.parse(lay.fetch(m.config))


def test_convert_sets_annotations_diff_ids_and_oci_types(tmp_path: Path) -> None:
    write_image(tmp_path / "src", layers(), docker_types=True)
    convert(tmp_path, f"oci:{tmp_path / 'src'}:latest", f"oci:{tmp_path / 'dst'}:esgz", oci=True, chunk_size=100_000)
    lay, m, cfg = load(f"oci:{tmp_path / 'dst'}:esgz")
    assert m.media_type == mt.OCI_MANIFEST and m.config.media_type == mt.OCI_CONFIG
    for layer, diff_id in zip(m.layers, cfg.diff_ids, strict=True):
        assert layer.media_type == mt.OCI_LAYER_GZIP
        blob = lay.blob_path(layer.digest).read_bytes()
        assert diff_id == digestlib.of_bytes(gzip.decompress(blob))
        assert layer.annotations[mt.ANNOTATION_UNCOMPRESSED_SIZE] == str(len(gzip.decompress(blob)))
        open_estargz(BytesSource(blob), toc_digest=layer.annotations[mt.ANNOTATION_TOC_DIGEST])
    assert all(r.ok for r in check_image(lay, full=True))


def test_without_oci_flag_docker_types_are_kept(tmp_path: Path) -> None:
    write_image(tmp_path / "src", layers(), docker_types=True)
    convert(tmp_path, f"oci:{tmp_path / 'src'}:latest", f"oci:{tmp_path / 'dst'}:esgz")
    _, m, _ = load(f"oci:{tmp_path / 'dst'}:esgz")
    assert m.media_type == mt.DOCKER_MANIFEST and m.layers[0].media_type == mt.DOCKER_LAYER_GZIP


def test_conversion_is_deterministic_and_keeps_estargz_layers(tmp_path: Path) -> None:
    write_image(tmp_path / "src", layers())
    a = convert(tmp_path, f"oci:{tmp_path / 'src'}:latest", f"oci:{tmp_path / 'a'}:x")
    b = convert(tmp_path, f"oci:{tmp_path / 'src'}:latest", f"oci:{tmp_path / 'b'}:x")
    assert a.digest == b.digest
    # Converting the converted image again keeps its layers unless forced.
    again = convert(tmp_path, f"oci:{tmp_path / 'a'}:x", f"oci:{tmp_path / 'c'}:x")
    assert again.digest == a.digest
    forced = convert(tmp_path, f"oci:{tmp_path / 'a'}:x", f"oci:{tmp_path / 'd'}:x", force=True, chunk_size=1000)
    assert forced.digest != a.digest


def test_record_in_orders_prioritized_files(tmp_path: Path) -> None:
    rec = tmp_path / "record.json"
    rec.write_text('{"path": "/etc/hosts"}\n{"path": "big"}\n{"path": "/etc/hosts"}\n\n{"path": "/nope"}\n')
    assert read_record(rec) == ["etc/hosts", "big", "nope"]
    write_image(tmp_path / "src", layers())
    convert(tmp_path, f"oci:{tmp_path / 'src'}:latest", f"oci:{tmp_path / 'dst'}:x", prioritized=read_record(rec))
    lay, m, _ = load(f"oci:{tmp_path / 'dst'}:x")
    idx0 = open_estargz(lay.blob_source(m.layers[0]))
    idx1 = open_estargz(lay.blob_source(m.layers[1]))
    assert idx0.lookup(".prefetch.landmark") and idx1.lookup(".prefetch.landmark")
    big = idx0.lookup("big")
    hosts = idx1.lookup("etc/hosts")
    assert big is not None and hosts is not None
    assert big.chunks[-1].blob_end <= idx0.prefetch_end
    assert hosts.chunks[-1].blob_end <= idx1.prefetch_end
    assert idx1.lookup("var/cache/b").chunks[0].blob_offset > idx1.prefetch_end  # type: ignore[union-attr]


def test_prefetch_profile_landmarks_then_patterns(tmp_path: Path) -> None:
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"prefetch": {"landmarks": ["/var/cache/a"], "patterns": ["etc/p*"]}}))
    p = PrefetchProfile.load(prof)
    assert p.expand(["etc/passwd", "etc/old", "var/cache/a"]) == ["var/cache/a", "etc/passwd"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"nope": 1}')
    with pytest.raises(LazypullError, match="prefetch"):
        PrefetchProfile.load(bad)


def test_multi_platform_index(tmp_path: Path) -> None:
    root = tmp_path / "src"
    a = write_image(root, layers()[:1], tag="amd", platform=Platform.parse("linux/amd64"))
    b = write_image(root, [[Entry("arm", data=b"arm")]], tag="arm", platform=Platform.parse("linux/arm64"))
    idx = Index([a.manifest_desc, b.manifest_desc])
    data = idx.to_bytes()
    d = Descriptor(mt.OCI_INDEX, digestlib.of_bytes(data), len(data))
    a.layout.push_manifest(d, data, tag="multi")
    out = convert(tmp_path, f"oci:{root}:multi", f"oci:{tmp_path / 'all'}:x", all_platforms=True)
    assert out.media_type == mt.OCI_INDEX
    lay = OCILayout(tmp_path / "all")
    new = Index.parse(lay.fetch(out))
    assert [str(m.platform) for m in new.manifests] == ["linux/amd64", "linux/arm64"]
    one = convert(tmp_path, f"oci:{root}:multi", f"oci:{tmp_path / 'one'}:x", platforms=[Platform.parse("linux/arm64")])
    assert one.media_type == mt.OCI_MANIFEST and str(one.platform) == "linux/arm64"
    assert all(r.ok for r in check_image(lay, full=True, all_platforms=True))


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(dirpath) / n
            st = p.lstat()
            content: object = None
            if p.is_symlink():
                content = os.readlink(p)
            elif p.is_file():
                content = hashlib.sha256(p.read_bytes()).hexdigest()
            rel = str(p.relative_to(root))
            out[rel] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_nlink if p.is_file() else 0,
                content,
                st.st_mtime_ns if not p.is_dir() else 0,
            )
    return out


def test_unpack_estargz_equals_unpack_of_original(tmp_path: Path) -> None:
    write_image(tmp_path / "src", layers())
    convert(tmp_path, f"oci:{tmp_path / 'src'}:latest", f"oci:{tmp_path / 'dst'}:x", chunk_size=50_000)
    unpack_image(OCILayout.from_ref(f"oci:{tmp_path / 'src'}:latest"), tmp_path / "plain")
    unpack_image(OCILayout.from_ref(f"oci:{tmp_path / 'dst'}:x"), tmp_path / "lazy")
    t = tree(tmp_path / "lazy")
    assert t == tree(tmp_path / "plain")
    assert "etc/old" not in t and "var/cache/a" not in t and "var/cache/b" in t
    assert t["etc/hosts"][3] == 2  # hardlinked
    assert (tmp_path / "lazy" / "big").read_bytes() == (tmp_path / "plain" / "big").read_bytes()


def test_unpack_refuses_to_follow_symlinks_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    write_image(tmp_path / "src", [[Entry("evil", "symlink", link=str(outside))], [Entry("evil/pwned", data=b"x")]])
    convert(tmp_path, f"oci:{tmp_path / 'src'}:latest", f"oci:{tmp_path / 'dst'}:x")
    for ref in (f"oci:{tmp_path / 'src'}:latest", f"oci:{tmp_path / 'dst'}:x"):
        with pytest.raises(UnsafePathError):
            unpack_image(OCILayout.from_ref(ref), tmp_path / f"out{len(ref)}")
    assert not (outside / "pwned").exists()


def test_unpack_rejects_dotdot_names(tmp_path: Path) -> None:
    write_image(tmp_path / "src", [[Entry("../escape", data=b"x")]])
    with pytest.raises(FormatError, match="escapes"):
        unpack_image(OCILayout.from_ref(f"oci:{tmp_path / 'src'}:latest"), tmp_path / "out")
    assert not (tmp_path / "escape").exists()


def test_cli_convert_check_and_tamper(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_image(tmp_path / "src", layers())
    assert main(["convert", "--oci", f"oci:{tmp_path / 'src'}:latest", f"oci:{tmp_path / 'dst'}:esgz"]) == 0
    digest = capsys.readouterr().out.strip().splitlines()[-1]
    digestlib.validate(digest)
    assert main(["check", "--full", f"oci:{tmp_path / 'dst'}:esgz"]) == 0
    lay, m, _ = load(f"oci:{tmp_path / 'dst'}:esgz")
    idx = open_estargz(lay.blob_source(m.layers[0]))
    big = idx.lookup("big")
    assert big is not None
    path = lay.blob_path(m.layers[0].digest)
    data = bytearray(path.read_bytes())
    data[big.chunks[0].blob_offset + 30] ^= 0x55
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["check", "--full", f"oci:{tmp_path / 'dst'}:esgz"]) == 1
    assert "big" in capsys.readouterr().out


def test_cli_prefetch_profile_patterns_reach_the_layer(tmp_path: Path) -> None:
    write_image(tmp_path / "src", layers())
    prof = tmp_path / "profile.json"
    prof.write_text(json.dumps({"prefetch": {"landmarks": ["/etc/hosts"], "patterns": ["var/cache/*"]}}))
    assert (
        main(
            ["convert", "--prefetch-profile", str(prof), f"oci:{tmp_path / 'src'}:latest", f"oci:{tmp_path / 'dst'}:p"]
        )
        == 0
    )
    lay, m, _ = load(f"oci:{tmp_path / 'dst'}:p")
    top = open_estargz(lay.blob_source(m.layers[1]))
    for name in ("etc/hosts", "var/cache/b"):
        e = top.lookup(name)
        assert e is not None and e.chunks[-1].blob_end <= top.prefetch_end, name
    assert top.lookup("etc/sym") is not None
    assert (
        main(
            [
                "convert",
                "--prefetch-profile",
                str(prof),
                "--record-in",
                str(prof),
                f"oci:{tmp_path / 'src'}:latest",
                f"oci:{tmp_path / 'x'}:p",
            ]
        )
        == 1
    )
