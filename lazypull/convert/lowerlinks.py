"""Hardlinks to files of lower layers, made self-contained the way overlayfs leaves them.

A layer may hardlink to a file that only a lower layer holds (tar extraction onto the
merged tree allows it). A lazily served layer is a filesystem of its own, so it cannot
point below itself. When containerd applies such a layer on overlayfs, the target is
copied up into the new layer and linked there; the converter does the same: the lower
file (content and metadata) is written into the layer just before the first hardlink
to it, and the hardlinks then resolve inside the layer.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from lazypull.errors import FormatError
from lazypull.format.index import normalize
from lazypull.format.tarstream import Readable, open_decompressed
from lazypull.oci.store import ImageStore, VerifyingReader
from lazypull.oci.types import Descriptor

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def _hidden_by(name: str, target: str) -> bool:
    """Does whiteout entry *name* of a layer hide *target* of the layers below it?"""
    parent, _, base = name.rpartition("/")
    if base == OPAQUE:
        return target.startswith(parent + "/") if parent else True
    gone = f"{parent}/{base[len(WHITEOUT) :]}" if parent else base[len(WHITEOUT) :]
    return target == gone or target.startswith(gone + "/")


def find_lower_files(
    store: ImageStore, lowers: Sequence[Descriptor], targets: set[str], tmpdir: str
) -> dict[str, tuple[tarfile.TarInfo, Path]]:
    """Each target as the layers below leave it: its last tar header and its content
    (spooled to *tmpdir*). Lower layers are read top down; a whiteout hides what is below."""
    found: dict[str, tuple[tarfile.TarInfo, Path]] = {}
    pending = set(targets)
    for desc in reversed(lowers):
        if not pending:
            break
        hits: dict[str, tuple[tarfile.TarInfo, Path | str]] = {}  # str: hardlink within that layer
        hidden: set[str] = set()
        with (
            VerifyingReader(store.open_blob(desc), desc) as raw,
            tarfile.open(
                fileobj=open_decompressed(raw),
                mode="r|",
                encoding="utf-8",
                errors="surrogateescape",
            ) as tf,
        ):
            for m in tf:
                name = normalize(m.name)
                base = name.rpartition("/")[2]
                if base.startswith(WHITEOUT):
                    hidden |= {t for t in pending if _hidden_by(name, t)}
                    continue
                if name not in pending:
                    continue
                if m.islnk():
                    hits[name] = (m, normalize(m.linkname))
                elif m.isreg():
                    fd, path = tempfile.mkstemp(dir=tmpdir, prefix="lazypull-lower-")
                    with open(fd, "wb") as out:
                        src = tf.extractfile(m)
                        if src is not None:
                            shutil.copyfileobj(src, out, 1 << 20)
                    hits[name] = (m, Path(path))
                else:
                    raise FormatError(f"hardlink target {name!r} is a {_kind(m)} in lower layer {desc.digest}")
        for name, (m, where) in hits.items():
            if isinstance(where, str):
                raise FormatError(f"hardlink target {name!r} is itself a hardlink in lower layer {desc.digest}")
            m.name = name
            found[name] = (m, where)
            pending.discard(name)
        pending -= hidden
    missing = targets - found.keys()
    if missing:
        raise FormatError(f"hardlinks to {sorted(missing)[:3]}: no lower layer holds these files")
    return found


def _kind(m: tarfile.TarInfo) -> str:
    return "directory" if m.isdir() else "symlink" if m.issym() else "special file"


def with_lower_files(src: Readable, found: dict[str, tuple[tarfile.TarInfo, Path]], out: BinaryIO) -> None:
    """Copy the layer tar *src* to *out*, writing each lower file before the first hardlink to it."""
    written: set[str] = set()
    with (
        tarfile.open(
            fileobj=open_decompressed(src),
            mode="r|",
            encoding="utf-8",
            errors="surrogateescape",
        ) as tf,
        tarfile.open(
            fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"
        ) as w,
    ):
        for m in tf:
            target = normalize(m.linkname) if m.islnk() else ""
            if target in found and target not in written:
                ti, path = found[target]
                with open(path, "rb") as f:
                    w.addfile(ti, f)
                written.add(target)
            w.addfile(m, tf.extractfile(m) if m.isreg() else None)
