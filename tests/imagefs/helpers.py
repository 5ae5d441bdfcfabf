"""Test images for the image API: built as published (gzip) and converted by lazypull."""

from __future__ import annotations

import os
from pathlib import Path

from lazypull.convert.image import ConvertOptions, convert_image
from lazypull.oci.layout import OCILayout
from tests.support.images import Entry, write_image

BIG = os.urandom(3_000_000)


def overlay_layers() -> list[list[Entry]]:
    """Whiteouts, an opaque directory, replaced types, hardlinks and hostile symlinks."""
    return [
        [
            Entry("etc", "dir", mode=0o755),
            Entry("etc/passwd", data=b"root:x:0:0\n"),
            Entry("etc/old", data=b"old"),
            Entry("etc/os-release", data=b'ID=debian\nVERSION_ID="12"\n'),
            Entry("var/cache/a", data=b"lower a"),  # implicit parents
            Entry("var/cache/sub/deep", data=b"deep"),
            Entry("opt", "dir", mode=0o700),
            Entry("opt/keep", data=b"kept"),
            Entry("was-dir", "dir"),
            Entry("was-dir/child", data=b"hidden later"),
            Entry("was-file", data=b"a file first"),
            Entry("data", "dir", mode=0o755),
            Entry("data/big.bin", data=BIG, mode=0o600),
            Entry("usr/bin/tool", data=b"#!/bin/sh\necho tool\n", mode=0o755),
            Entry("bin", "symlink", link="usr/bin"),
            Entry("dev/null", "char", devmajor=1, devminor=3, mode=0o666),
        ],
        [
            Entry("etc/.wh.old"),
            Entry("var/cache", "dir", mode=0o750),
            Entry("var/cache/.wh..wh..opq"),
            Entry("var/cache/b", data=b"upper b"),
            Entry("etc/hosts", data=b"127.0.0.1 localhost\n", uid=1000, gid=1000, mode=0o640),
            Entry("etc/hosts.lnk", "hardlink", link="etc/hosts"),
            Entry("etc/sym", "symlink", link="hosts"),
            Entry("escape", "symlink", link="../../../../etc/passwd"),
            Entry("abs", "symlink", link="/etc/hosts"),
            Entry("updir", "symlink", link="/../../etc"),
            Entry("loop1", "symlink", link="loop2"),
            Entry("loop2", "symlink", link="loop1"),
            Entry("dangling", "symlink", link="/nowhere"),
            Entry("was-dir", data=b"now a file"),
            Entry("was-file", "dir"),
            Entry("was-file/inside", data=b"in the new dir"),
            Entry("opt/keep", data=b"replaced"),
            Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"),
        ],
    ]


def build(tmp: Path, fmt: str = "estargz", layers: list[list[Entry]] | None = None) -> str:
    """An image as an OCI layout; returns its ``oci:DIR:TAG`` reference (``gzip``: as published)."""
    write_image(tmp / "src", layers or overlay_layers())
    if fmt == "gzip":
        return f"oci:{tmp / 'src'}:latest"
    dst = OCILayout.from_ref(f"oci:{tmp / fmt}:{fmt}", create=True)
    convert_image(
        OCILayout.from_ref(f"oci:{tmp / 'src'}:latest"),
        dst,
        ConvertOptions(oci=True, chunk_size=256 << 10, layer_format=fmt),
        tag=fmt,
    )
    return f"oci:{tmp / fmt}:{fmt}"
