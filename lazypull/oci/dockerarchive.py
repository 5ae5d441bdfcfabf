"""``docker-archive:PATH[:REF]``: the tarballs ``docker save`` writes and ``docker load`` reads.

As a source the archive's ``manifest.json`` names each image's config and layer files;
they are read in place (no extraction) and presented as an OCI manifest whose layer
media types follow their content (plain tar, gzip or zstd), as skopeo's transport does.

As a destination, blobs and manifests are staged in an OCI layout next to the target
and :meth:`DockerArchive.close` writes one tar holding both the OCI layout (``oci-layout``,
``index.json``, ``blobs/``) and Docker's ``manifest.json``, the shape Docker 25+ saves:
``docker load``, ``ctr import`` and skopeo all read it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from lazypull.errors import OCIError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.layout import OCILayout
from lazypull.oci.store import ImageStore
from lazypull.oci.types import Descriptor, ImageConfig, Manifest, dump_json

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

PREFIX = "docker-archive:"
MAX_MANIFEST_JSON = 4 << 20


def parse_archive_ref(ref: str) -> tuple[Path, str | None]:
    """``docker-archive:PATH[:REF]`` -> (PATH, REF or None); PATH wins if it exists whole."""
    if not ref.startswith(PREFIX):
        raise OCIError(f"not a docker-archive reference: {ref!r} (expected docker-archive:PATH[:REF])")
    rest = ref[len(PREFIX) :]
    if not rest:
        raise OCIError("docker-archive: needs a path")
    if Path(rest).exists() or ":" not in rest:
        return Path(rest), None
    path, _, name = rest.partition(":")
    return Path(path), name or None


@dataclass(frozen=True)
class _Member:
    offset: int
    size: int


class _Section(io.RawIOBase):
    """A byte range of the archive file, read with pread."""

    def __init__(self, fd: int, m: _Member) -> None:
        self._fd, self._m, self._pos = fd, m, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: WriteableBuffer) -> int:
        view = memoryview(b)
        n = min(len(view), self._m.size - self._pos)
        if n <= 0:
            return 0
        data = os.pread(self._fd, n, self._m.offset + self._pos)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


class _SectionSource:
    """Random access (``ReadAt``) to one blob inside the archive."""

    def __init__(self, fd: int, m: _Member) -> None:
        self._fd, self._m = fd, m

    @property
    def size(self) -> int:
        return self._m.size

    def read_at(self, offset: int, length: int) -> bytes:
        from lazypull.source import check_range

        check_range(self._m.size, offset, length)
        return os.pread(self._fd, length, self._m.offset + offset)


def _sniff_layer(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return mt.OCI_LAYER_GZIP
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return mt.OCI_LAYER_ZSTD
    return mt.OCI_LAYER


class DockerArchive(ImageStore):
    def __init__(self, path: Path | str, ref: str | None = None, *, create: bool = False) -> None:
        self.path = Path(path)
        self.tag = ref
        self.name = f"{PREFIX}{self.path}" + (f":{ref}" if ref else "")
        self._files: dict[str, _Member] = {}  # digest -> member (reading)
        self._docs: dict[str, bytes] = {}  # synthesized manifest (reading)
        self._root: Descriptor | None = None
        self._fd = -1
        self._stage: OCILayout | None = None
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            self._stage = OCILayout(tmp, create=True)
        else:
            self._open()

    @classmethod
    def from_ref(cls, ref: str, *, create: bool = False) -> DockerArchive:
        path, name = parse_archive_ref(ref)
        return cls(path, name, create=create)

    # -- reading ------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            with open(self.path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tf:
                members = {_clean(m.name): m for m in tf.getmembers() if m.isreg()}
                mj = members.get("manifest.json")
                if mj is None:
                    raise OCIError(f"{self.name}: no manifest.json (not a docker save archive)")
                if mj.size > MAX_MANIFEST_JSON:
                    raise OCIError(f"{self.name}: manifest.json is over {MAX_MANIFEST_JSON} bytes")
                entries = json.loads(os.pread(self._fd, mj.size, mj.offset_data))
        except FileNotFoundError:
            raise OCIError(f"{self.name}: no such file") from None
        except (tarfile.TarError, ValueError) as e:
            raise OCIError(f"{self.name}: not a readable docker archive ({e})") from None
        entry = self._choose(entries)
        try:
            cfg_name = str(entry["Config"])
            layer_names = [str(x) for x in entry["Layers"]]
        except (KeyError, TypeError):
            raise OCIError(f"{self.name}: manifest.json entry lacks Config or Layers") from None

        def member(name: str) -> tarfile.TarInfo:
            m = members.get(_clean(name))
            if m is None:
                raise OCIError(f"{self.name}: manifest.json names {name!r}, which is not in the archive")
            return m

        cfg_m = member(cfg_name)
        config = self._describe(cfg_m, mt.OCI_CONFIG)
        ImageConfig.parse(self.fetch(config))  # a clear error now rather than mid-convert
        layers = []
        for n in layer_names:
            m = member(n)
            head = os.pread(self._fd, 4, m.offset_data)
            layers.append(self._describe(m, _sniff_layer(head)))
        data = Manifest(config, layers, mt.OCI_MANIFEST).to_bytes()
        self._root = Descriptor(mt.OCI_MANIFEST, digestlib.of_bytes(data), len(data))
        self._docs[self._root.digest] = data

    def _choose(self, entries: Any) -> dict[str, Any]:
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise OCIError(f"{self.name}: manifest.json lists no images")
        images: list[dict[str, Any]] = entries
        if self.tag is None:
            if len(images) == 1:
                return images[0]
            tags = ", ".join(t for e in images for t in e.get("RepoTags") or []) or "untagged"
            raise OCIError(f"{self.name}: archive holds {len(images)} images ({tags}); name one with :REF")
        for e in images:
            for t in e.get("RepoTags") or []:
                if self.tag in (t, t.rsplit("/", 1)[-1]) or t == f"docker.io/library/{self.tag}":
                    return e
        raise OCIError(f"{self.name}: no image tagged {self.tag!r} in the archive")

    def _describe(self, m: tarfile.TarInfo, media_type: str) -> Descriptor:
        h = hashlib.sha256()
        sec = _Section(self._fd, _Member(m.offset_data, m.size))
        buf = bytearray(1 << 20)
        while n := sec.readinto(buf):
            h.update(memoryview(buf)[:n])
        d = Descriptor(media_type, "sha256:" + h.hexdigest(), m.size)
        self._files[d.digest] = _Member(m.offset_data, m.size)
        return d

    def resolve(self) -> Descriptor:
        if self._stage is not None:
            return self._stage.resolve()
        assert self._root is not None
        return self._root

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        if self._stage is not None:
            return self._stage.open_blob(desc)
        if desc.digest in self._docs:
            return io.BytesIO(self._docs[desc.digest])
        m = self._files.get(desc.digest)
        if m is None:
            raise OCIError(f"{self.name}: blob {desc.digest} is not in the archive")
        return io.BufferedReader(_Section(self._fd, m), 1 << 20)

    def has_blob(self, desc: Descriptor) -> bool:
        if self._stage is not None:
            return self._stage.has_blob(desc)
        return desc.digest in self._files or desc.digest in self._docs

    def blob_source(self, desc: Descriptor) -> _SectionSource:
        m = self._files.get(desc.digest)
        if m is None:
            raise OCIError(f"{self.name}: blob {desc.digest} is not in the archive")
        return _SectionSource(self._fd, m)

    # -- writing ------------------------------------------------------------------------
    def _writable(self) -> OCILayout:
        if self._stage is None:
            raise OCIError(f"{self.name} was opened for reading")
        return self._stage

    def push_blob(self, desc: Descriptor, stream: BinaryIO) -> None:
        self._writable().push_blob(desc, stream)

    def push_manifest(self, desc: Descriptor, data: bytes, tag: str | None = None) -> None:
        stage = self._writable()
        stage.push_manifest(desc, data)
        stage.set_tag(tag or self.tag or "latest", desc)  # the last pushed root is the image

    def close(self) -> None:
        """Write the archive (destination) or release the file (source)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        stage, self._stage = self._stage, None
        if stage is None:
            return
        try:
            if len(stage.read_index().manifests):
                self._write(stage)
        finally:
            shutil.rmtree(stage.root, ignore_errors=True)

    def _write(self, stage: OCILayout) -> None:
        from lazypull.oci.resolve import image_manifests

        root = stage.resolve()
        entries = []
        for i, d in enumerate(image_manifests(stage, root, all_platforms=True)):
            m = Manifest.parse(stage.fetch(d), d.media_type)
            entries.append(
                {
                    "Config": _blob_name(m.config.digest),
                    "RepoTags": [self.tag] if self.tag and i == 0 else [],
                    "Layers": [_blob_name(x.digest) for x in m.layers],
                }
            )
        ann = {mt.ANNOTATION_CONTAINERD_IMAGE_NAME: self.tag, mt.ANNOTATION_REF_NAME: self.tag} if self.tag else {}
        index = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [Descriptor(root.media_type, root.digest, root.size, ann).to_json()],
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
                _add_bytes(tf, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
                for blob in sorted((stage.root / "blobs").rglob("*")):
                    if blob.is_file():
                        tf.add(blob, arcname=str(blob.relative_to(stage.root)), recursive=False, filter=_plain)
                _add_bytes(tf, "index.json", dump_json(index))
                _add_bytes(tf, "manifest.json", json.dumps(entries).encode())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _clean(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _blob_name(digest: str) -> str:
    return f"blobs/{digestlib.algorithm(digest)}/{digestlib.hex_part(digest)}"


def _plain(ti: tarfile.TarInfo) -> tarfile.TarInfo:
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mode = 0o644
    ti.mtime = 0
    return ti


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = _plain(tarfile.TarInfo(name))
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))
