"""Build small, real OCI images in tests: layers from tar entries, written as a layout.

Images are runnable when they include :func:`busybox_layer` (Debian's static busybox),
so end-to-end tests can ``ctr run`` them without any network.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.layout import OCILayout
from lazypull.oci.types import Descriptor, Manifest, Platform, host_platform

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


@dataclass
class Entry:
    """One tar entry. type: file, dir, symlink, hardlink, char, block, fifo."""

    name: str
    type: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    link: str = ""
    devmajor: int = 0
    devminor: int = 0
    mtime: int = 1_600_000_000
    xattrs: dict[str, str] = field(default_factory=dict)
    uname: str = ""
    gname: str = ""


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def make_tar(entries: list[Entry]) -> bytes:
    """A PAX tar of *entries* (xattrs as SCHILY.xattr.* records, like Docker/buildkit)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = _TYPES[e.type]
            ti.mode = e.mode
            ti.uid, ti.gid = e.uid, e.gid
            ti.uname, ti.gname = e.uname, e.gname
            ti.mtime = e.mtime
            ti.linkname = e.link
            ti.devmajor, ti.devminor = e.devmajor, e.devminor
            if e.xattrs:
                ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            if e.type == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def busybox_layer() -> list[Entry]:
    """A minimal runnable root: static busybox plus links for common applets."""
    data = Path(BUSYBOX).read_bytes()
    entries = [Entry("bin", "dir", mode=0o755), Entry("bin/busybox", data=data, mode=0o755)]
    for applet in (
        "sh",
        "cat",
        "ls",
        "md5sum",
        "sha256sum",
        "echo",
        "true",
        "sleep",
        "dd",
        "head",
        "find",
        "stat",
        "wc",
    ):
        entries.append(Entry(f"bin/{applet}", "symlink", link="busybox", mode=0o777))
    entries += [Entry(d, "dir", mode=0o755) for d in ("etc", "tmp", "proc", "sys", "dev", "root", "usr")]
    return entries


@dataclass
class BuiltImage:
    layout: OCILayout
    manifest_desc: Descriptor
    manifest: Manifest
    layer_tars: list[bytes]


def write_image(
    root: Path,
    layers: list[list[Entry] | bytes],
    *,
    tag: str = "latest",
    platform: Platform | None = None,
    cmd: list[str] | None = None,
    docker_types: bool = False,
    gzip_level: int = 6,
    user: str = "",
) -> BuiltImage:
    """Write a single-platform image as an OCI layout at *root*, tagged *tag*."""
    layout = OCILayout(root, create=True)
    platform = platform or host_platform()
    layer_descs: list[Descriptor] = []
    diff_ids: list[str] = []
    tars: list[bytes] = []
    for layer in layers:
        tar = layer if isinstance(layer, bytes) else make_tar(layer)
        tars.append(tar)
        blob = gzip.compress(tar, compresslevel=gzip_level, mtime=0)
        diff_ids.append(digestlib.of_bytes(tar))
        d = Descriptor(mt.DOCKER_LAYER_GZIP if docker_types else mt.OCI_LAYER_GZIP, digestlib.of_bytes(blob), len(blob))
        layout.push_bytes(d, blob)
        layer_descs.append(d)
    config = {
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Cmd": cmd or ["/bin/sh"], "Env": ["PATH=/bin:/usr/bin"]} | ({"User": user} if user else {}),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "lazypull tests"} for _ in layers],
    }
    cfg = json.dumps(config).encode()
    cfg_desc = Descriptor(mt.DOCKER_CONFIG if docker_types else mt.OCI_CONFIG, digestlib.of_bytes(cfg), len(cfg))
    layout.push_bytes(cfg_desc, cfg)
    manifest = Manifest(cfg_desc, layer_descs, mt.DOCKER_MANIFEST if docker_types else mt.OCI_MANIFEST)
    data = manifest.to_bytes()
    mdesc = Descriptor(manifest.media_type, digestlib.of_bytes(data), len(data), platform=platform)
    layout.push_manifest(mdesc, data, tag=tag)
    return BuiltImage(layout, mdesc, manifest, tars)
