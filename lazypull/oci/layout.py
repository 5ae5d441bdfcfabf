"""OCI image layout directories (``oci:DIR[:TAG]``): read and write, atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from lazypull.errors import FormatError, OCIError
from lazypull.fsutil import atomic_write
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.store import ImageStore
from lazypull.oci.types import Descriptor, Index, dump_json
from lazypull.source import FileSource

LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}


def parse_layout_ref(ref: str) -> tuple[Path, str | None]:
    """``oci:DIR[:TAG]`` -> (DIR, TAG or None)."""
    if not ref.startswith("oci:"):
        raise OCIError(f"not an OCI layout reference: {ref!r} (expected oci:DIR[:TAG])")
    rest = ref[4:]
    # DIR may contain ':' only if it is not followed by a tag-like suffix; split on the last ':'.
    path, sep, tag = rest.rpartition(":")
    if sep and path and tag and "/" not in tag:
        return Path(path), tag
    return Path(rest), None


def blob_file(path: Path, desc: Descriptor, where: str) -> FileSource:
    """A layout's blob file, checked against its descriptor's size: a truncated copy is
    named here, not reported later as a bad footer or a short read."""
    src = FileSource(path)
    if src.size != desc.size:
        src.close()
        raise FormatError(
            f"{where}: layer blob {desc.digest} is {'truncated' if src.size < desc.size else 'too long'} "
            f"({src.size} of {desc.size} bytes; an interrupted copy?): copy the image here again from its source"
        )
    return src


class OCILayout(ImageStore):
    def __init__(self, root: Path | str, tag: str | None = None, *, create: bool = False) -> None:
        self.root = Path(root)
        self.tag = tag
        self.name = f"oci:{self.root}" + (f":{tag}" if tag else "")
        if create:
            (self.root / "blobs").mkdir(parents=True, exist_ok=True)
            marker = self.root / "oci-layout"
            if not marker.exists():
                self._atomic_write(marker, json.dumps(LAYOUT_VERSION).encode())
            if not (self.root / "index.json").exists():
                self._write_index(Index(manifests=[]))
        elif not (self.root / "oci-layout").is_file():
            raise OCIError(f"{self.root} is not an OCI image layout (no oci-layout file)")

    @classmethod
    def from_ref(cls, ref: str, *, create: bool = False) -> OCILayout:
        path, tag = parse_layout_ref(ref)
        return cls(path, tag, create=create)

    # -- index.json -------------------------------------------------------------------
    def read_index(self) -> Index:
        try:
            data = (self.root / "index.json").read_bytes()
        except FileNotFoundError:
            raise OCIError(f"{self.root} has no index.json") from None
        try:
            return Index.parse(data, mt.OCI_INDEX)
        except OCIError as e:
            raise OCIError(f"{self.root / 'index.json'}: {e}") from None

    def _write_index(self, index: Index) -> None:
        self._atomic_write(self.root / "index.json", dump_json(index.to_json()))

    def resolve(self) -> Descriptor:
        index = self.read_index()
        if self.tag is None:
            if len(index.manifests) == 1:
                return index.manifests[0]
            if not index.manifests:
                raise OCIError(f"{self.name}: layout is empty")
            raise OCIError(f"{self.name}: layout holds {len(index.manifests)} images; name one with :TAG")
        for d in index.manifests:
            names = (d.annotations.get(mt.ANNOTATION_REF_NAME), d.annotations.get(mt.ANNOTATION_CONTAINERD_IMAGE_NAME))
            if self.tag in names or any(n and n.rsplit(":", 1)[-1] == self.tag for n in names if n):
                return d
        raise OCIError(f"{self.name}: no image tagged {self.tag!r}")

    # -- blobs ------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        algo = digestlib.algorithm(digest)
        return self.root / "blobs" / algo / digestlib.hex_part(digest)

    def has_blob(self, desc: Descriptor) -> bool:
        return self.blob_path(desc.digest).is_file()

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        try:
            return open(self.blob_path(desc.digest), "rb")
        except FileNotFoundError:
            raise OCIError(f"{self.name}: blob {desc.digest} is missing") from None

    def blob_source(self, desc: Descriptor) -> FileSource:
        path = self.blob_path(desc.digest)
        if not path.is_file():
            raise OCIError(f"{self.name}: blob {desc.digest} is missing")
        return blob_file(path, desc, self.name)

    def push_blob(self, desc: Descriptor, stream: BinaryIO) -> None:
        """Copy *stream* in, verifying digest and size before the blob becomes visible."""
        dest = self.blob_path(desc.digest)
        if dest.is_file():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        d = digestlib.Digester(digestlib.algorithm(desc.digest))
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(1 << 20):
                    d.update(chunk)
                    out.write(chunk)
            if d.size != desc.size or d.digest() != desc.digest:
                raise OCIError(f"blob {desc.digest}: content does not match (got {d.digest()}, {d.size} bytes)")
            os.replace(tmp, dest)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def add_blob_file(self, path: Path, desc: Descriptor) -> None:
        """Move an already-verified file into the layout (no copy when on one filesystem)."""
        dest = self.blob_path(desc.digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            path.unlink(missing_ok=True)
            return
        try:
            os.replace(path, dest)
        except OSError:
            shutil.copyfile(path, dest)
            path.unlink(missing_ok=True)

    def push_manifest(self, desc: Descriptor, data: bytes, tag: str | None = None) -> None:
        if len(data) != desc.size:
            raise OCIError(f"manifest {desc.digest}: size {len(data)} != descriptor size {desc.size}")
        digestlib.verify(data, desc.digest, what="manifest")
        dest = self.blob_path(desc.digest)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._atomic_write(dest, data)
        if tag is not None:
            self.set_tag(tag, desc)

    def set_tag(self, tag: str, desc: Descriptor) -> None:
        index = self.read_index()
        kept = [d for d in index.manifests if d.annotations.get(mt.ANNOTATION_REF_NAME) != tag]
        ann = {k: v for k, v in desc.annotations.items() if k != mt.ANNOTATION_REF_NAME}
        ann[mt.ANNOTATION_REF_NAME] = tag
        kept.append(Descriptor(desc.media_type, desc.digest, desc.size, ann, desc.platform, desc.urls, desc.extra))
        index.manifests = kept
        self._write_index(index)

    @staticmethod
    def _atomic_write(path: Path, data: bytes) -> None:
        atomic_write(path, data, 0o644)
