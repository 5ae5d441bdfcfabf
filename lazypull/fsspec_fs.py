"""``lazypull://``: files inside container images for fsspec users (pandas, pyarrow, xarray, ...).

    fsspec.open("lazypull://localhost:5000/app:v1/etc/os-release", plain_http=True)
    pandas.read_csv("lazypull://localhost:5000/data:v3/srv/table.csv", storage_options={"plain_http": True})

A path is an image reference followed by a path inside the image. The reference ends
with the first path component that carries its tag or digest (``app:v1``,
``app@sha256:...``), so references must name one: ``localhost:5000/team/app:v1/etc/hosts``
is ``/etc/hosts`` of ``localhost:5000/team/app:v1``. OCI layouts are written
``oci:DIR:TAG`` the same way: ``lazypull://oci:/srv/images/app:v1/etc/hosts`` (the
component with ``:TAG`` ends the directory). Storage options are :func:`lazypull.open_image`'s
keywords. The filesystem is read-only; each image is opened once per filesystem instance.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from fsspec import AbstractFileSystem

from lazypull.errors import ImageReadOnlyError
from lazypull.imagefs import FileInfo, ImageFS, open_image
from lazypull.registry.reference import ReferenceError


def split_path(path: str) -> tuple[str, str]:
    """``REF/inner/path`` (protocol already stripped) -> (REF, ``inner/path``)."""
    path = path.strip("/") if not path.startswith("oci:") else path.rstrip("/")
    prefix = ""
    if path.startswith("oci:"):
        prefix, path = "oci:", path[4:]
    parts = path.split("/")
    first = 0 if prefix else 1  # a registry host may carry ':port'
    for i in range(first, len(parts)):
        if ":" in parts[i] or "@" in parts[i]:
            if not prefix and i == 0:
                continue
            return prefix + "/".join(parts[: i + 1]), "/".join(parts[i + 1 :])
    raise ReferenceError(
        f"{prefix + path!r} names no image: end the reference with its tag or digest "
        "(HOST/REPO:TAG/path, HOST/REPO@sha256:.../path, oci:DIR:TAG/path)"
    )


class LazypullFileSystem(AbstractFileSystem):
    """Read-only fsspec filesystem over container images (see the module docstring)."""

    protocol = ("lazypull",)
    root_marker = ""

    def __init__(
        self,
        *,
        platform: str | None = None,
        cache_dir: str | None = None,
        plain_http: bool = False,
        insecure: bool = False,
        user: str | None = None,
        docker_config: str | None = None,
        registry_config: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._open_kw: dict[str, Any] = {
            "platform": platform,
            "cache_dir": cache_dir,
            "plain_http": plain_http,
            "insecure": insecure,
            "user": user,
            "docker_config": docker_config,
            "registry_config": registry_config,
        }
        self._images: dict[str, ImageFS] = {}
        self._lock = threading.Lock()

    # -- images ------------------------------------------------------------------------------
    def image(self, ref: str) -> ImageFS:
        """The opened image for *ref* (opened once, then shared by every call)."""
        img = self._images.get(ref)
        if img is None:
            with self._lock:
                img = self._images.get(ref)
                if img is None:
                    img = self._images[ref] = open_image(ref, **self._open_kw)
        return img

    def _split(self, path: str) -> tuple[ImageFS, str, str]:
        ref, inner = split_path(self._strip_protocol(path))
        return self.image(ref), ref, inner

    @staticmethod
    def _entry(ref: str, info: FileInfo, target: FileInfo | None = None) -> dict[str, Any]:
        shown = target or info
        kind = {"file": "file", "directory": "directory"}.get(shown.type, "other")
        d: dict[str, Any] = {
            "name": f"{ref}/{info.path}" if info.path else ref,
            "size": shown.size if kind == "file" else 0,
            "type": kind,
            "mode": shown.mode,
            "uid": shown.uid,
            "gid": shown.gid,
            "mtime": shown.mtime,
            "islink": info.is_symlink,
        }
        if info.is_symlink:
            d["destination"] = info.link_target
        if shown.digest:
            d["digest"] = shown.digest
        return d

    def _info_of(self, img: ImageFS, ref: str, inner: str, listing: bool = False) -> dict[str, Any]:
        """A symlink shows its target's type and size, except in a listing when the target is a
        directory: there it is "other", so walk/find/get do not descend into it (as ``os.walk``;
        images have links like ``usr/bin/X11 -> .``)."""
        own = img.stat(inner, follow_symlinks=False)
        if not own.is_symlink:
            return self._entry(ref, own)
        try:
            target = img.stat(inner)
        except OSError:
            return self._entry(ref, own)  # dangling or a loop: "other"
        return self._entry(ref, own, None if listing and target.is_dir else target)

    # -- AbstractFileSystem ------------------------------------------------------------------
    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        img, ref, inner = self._split(path)
        return self._info_of(img, ref, inner)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        img, ref, inner = self._split(path)
        info = self._info_of(img, ref, inner)
        if info["type"] != "directory":
            return [info] if detail else [info["name"]]
        real = img.realpath(inner).lstrip("/")
        base = f"{ref}/{inner.strip('/')}" if inner.strip("/") else ref
        out = []
        for name in img.ls(real):
            child = f"{real}/{name}" if real else name
            d = self._info_of(img, ref, child, listing=True)
            d["name"] = f"{base}/{name}"
            out.append(d)
        return out if detail else [d["name"] for d in out]

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if mode != "rb":
            raise ImageReadOnlyError(f"{path}: images are read-only (mode {mode!r})")
        img, _ref, inner = self._split(path)
        return img.open(inner, **({"buffering": block_size} if block_size else {}))

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        img, _ref, inner = self._split(path)
        if start is None and end is None:
            return img.read_bytes(inner)
        with img.open(inner) as f:
            size = f.raw.size  # type: ignore[attr-defined]
            lo = max(size + start, 0) if start is not None and start < 0 else (start or 0)
            hi = size if end is None else max(size + end, 0) if end < 0 else min(end, size)
            f.seek(lo)
            return f.read(max(hi - lo, 0))

    def ukey(self, path: str) -> str:
        info = self.info(path)
        return str(info.get("digest") or f"{info['name']}:{info['size']}:{info['mtime']}")

    def modified(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["mtime"], tz=UTC)

    def created(self, path: str) -> datetime:
        return self.modified(path)

    def readlink(self, path: str) -> str:
        img, _ref, inner = self._split(path)
        return img.readlink(inner)

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise ImageReadOnlyError("images are read-only")

    mkdir = makedirs = rmdir = rm_file = _rm = cp_file = pipe_file = touch = mv = _read_only

    def close(self) -> None:
        with self._lock:
            images, self._images = list(self._images.values()), {}
        for img in images:
            img.close()
