"""Images from raw layer blobs (any compression, any media type) and the three views of a
converted image every real-world test compares: the original unpacked, the conversion
unpacked, and the conversion served by ``lazypull mount``."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import zstandard

from lazypull.cli.main import main
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.layout import OCILayout
from lazypull.oci.types import Descriptor, Manifest, host_platform
from tests.e2e.interop import snapshot_tree

Tree = dict[str, tuple[object, ...]]


def compress(tar: bytes, media_type: str) -> bytes:
    if media_type in mt.ZSTD_LAYER_TYPES:
        return zstandard.ZstdCompressor(level=3).compress(tar)
    if media_type == mt.OCI_LAYER:
        return tar
    return gzip.compress(tar, compresslevel=6, mtime=0)


def raw_image(root: Path, layers: list[tuple[bytes, str]], *, tag: str = "latest") -> OCILayout:
    """An OCI layout whose layers are the given uncompressed tars, stored as *media_type*."""
    layout = OCILayout(root, create=True)
    descs, diff_ids = [], []
    for tar, media_type in layers:
        blob = compress(tar, media_type)
        d = Descriptor(media_type, digestlib.of_bytes(blob), len(blob))
        layout.push_bytes(d, blob)
        descs.append(d)
        diff_ids.append(digestlib.of_bytes(tar))
    p = host_platform()
    cfg = json.dumps(
        {"architecture": p.architecture, "os": p.os, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    cfg_desc = Descriptor(mt.OCI_CONFIG, digestlib.of_bytes(cfg), len(cfg))
    layout.push_bytes(cfg_desc, cfg)
    data = Manifest(cfg_desc, descs).to_bytes()
    layout.push_manifest(Descriptor(mt.OCI_MANIFEST, digestlib.of_bytes(data), len(data)), data, tag=tag)
    return layout


def gnu_tar(src: Path, *args: str) -> bytes:
    """A layer tar made by GNU tar from the directory *src* (numeric owners, sorted names,
    whole-second mtimes: sub-second PAX mtimes are compared in the corpus e2e test, where a
    one-second tolerance covers the TOC's rounding)."""
    return subprocess.run(
        ["tar", "--numeric-owner", "--sort=name", "--mtime=@1600000000", "-C", str(src), *args, "-cf", "-", "."],
        check=True,
        capture_output=True,
    ).stdout


def unpacked(ref: str, dest: Path) -> Tree:
    assert main(["unpack", ref, str(dest)]) == 0
    return snapshot_tree(dest)


def mounted(ref: str, work: Path) -> Tree:
    """The tree ``lazypull mount`` serves for *ref* (unmounted again before returning)."""
    mnt = work / "mnt"
    mnt.mkdir(parents=True)
    args = ["--cache-dir", str(work / "cache"), "--state-dir", str(work / "state"), "--no-background-fetch"]
    assert main(["mount", "--daemon", *args, ref, str(mnt)]) == 0
    try:
        return snapshot_tree(mnt)
    finally:
        main(["umount", "--state-dir", str(work / "state"), str(mnt)])


def three_views(src_ref: str, work: Path, *convert_args: str) -> tuple[Tree, Tree, Tree]:
    """(original unpacked, conversion unpacked, conversion mounted); the conversion is checked."""
    out = f"oci:{work / 'converted'}:x"
    assert main(["convert", *convert_args, src_ref, out]) == 0
    assert main(["check", "--full", out]) == 0
    return unpacked(src_ref, work / "orig"), unpacked(out, work / "conv"), mounted(out, work / "m")
