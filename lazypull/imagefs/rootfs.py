"""A whole image rootfs, mounted lazily: one FUSE mount per eStargz layer, overlayfs on top.

Layers without a TOC are downloaded and unpacked (said in a log line). The layers are
served by the state root's layer server (:mod:`lazypull.service.fsd`); the state of a
mount (its layers) lives in a state directory so ``lazypull umount`` from another
process can tear everything down.

Images are untrusted: a host-side mount is ``nosuid,nodev`` (the overlay, and each FUSE
layer, bind-remounted), so no host user gains root through an image's setuid binaries or
raw disk access through its device nodes; ``suid``/``dev`` are explicit opt-ins. The
snapshotter's mounts for containers are the runtime's business and are not touched here.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lazypull.chunkindex.find import with_chunk_index
from lazypull.convert.unpack import RootDir, apply_tar_layer
from lazypull.errors import LazypullError
from lazypull.format.soci.dispatch import is_lazy
from lazypull.fs.fsdclient import FsdClient, FsdError, holder_running, is_server_process, socket_path, start_server
from lazypull.fs.fuse.server import is_mounted, unmount
from lazypull.fs.spec import LayerSpec
from lazypull.imagefs.layers import warn_streamed
from lazypull.oci.artifacts import Kind, file_path, is_tar_layer, kind_of
from lazypull.oci.layout import OCILayout
from lazypull.oci.resolve import select_manifest
from lazypull.oci.store import ImageStore, VerifyingReader
from lazypull.oci.types import Descriptor, Manifest
from lazypull.registry.options import RegistryOptions
from lazypull.registry.repository import RegistryStore
from lazypull.soci.find import soci_layers

log = logging.getLogger(__name__)

DEFAULT_STATE_ROOT = Path("/run/lazypull/mounts")
DEFAULT_CACHE_DIR = Path("/var/cache/lazypull")


@dataclass
class MountOptions:
    prefetch: bool = True
    background_fetch: bool = True
    cache_dir: Path = DEFAULT_CACHE_DIR
    state_root: Path = DEFAULT_STATE_ROOT
    fetch_timeout_sec: float = 60.0
    prefetch_timeout_sec: float = 10.0
    passthrough: bool = False
    record_access: bool = False  # umount_image then returns the files read, in order (optimize)
    suid: bool = False  # honour the image's setuid/setgid bits (default: nosuid)
    dev: bool = False  # allow opening the image's device nodes (default: nodev)

    @property
    def mount_flags(self) -> str:
        return f"{'suid' if self.suid else 'nosuid'},{'dev' if self.dev else 'nodev'}"


def state_dir_for(mountpoint: Path, root: Path = DEFAULT_STATE_ROOT) -> Path:
    return root / hashlib.sha256(str(mountpoint.resolve()).encode()).hexdigest()[:16]


def layer_spec(store: ImageStore, layer_desc: object, opts: MountOptions, ropts: RegistryOptions | None) -> LayerSpec:
    from lazypull.oci.types import Descriptor

    assert isinstance(layer_desc, Descriptor)
    spec = LayerSpec(
        layer=layer_desc.to_json(),
        cache_dir=str(opts.cache_dir),
        prefetch=opts.prefetch,
        background_fetch=opts.background_fetch,
        fetch_timeout_sec=opts.fetch_timeout_sec,
        passthrough=opts.passthrough,
        record_access=opts.record_access,
    )
    if isinstance(store, RegistryStore):
        spec.ref = str(store.ref)
        spec.registry = (ropts or RegistryOptions()).to_json()
    elif isinstance(store, OCILayout):
        spec.blob_path = str(store.blob_path(layer_desc.digest))
    else:
        raise LazypullError(f"cannot mount layers from {store.name}")
    return spec


def layer_server(state_root: Path, start: bool = True) -> FsdClient:
    """The layer server of *state_root* (started on demand; it exits once it serves nothing).

    ``lazypull mount`` uses its own server per state root rather than the snapshotter's: its
    cache directory and options are the command line's, and a mount made by hand never
    depends on (or disturbs) the node's containers."""
    address = socket_path(state_root)
    if not start:
        return FsdClient(address)
    state_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    client, _ = start_server(state_root, address, log_path=state_root / "fsd.log", exit_when_idle=True)
    return client


def mount_image(store: ImageStore, mountpoint: Path, opts: MountOptions, ropts: RegistryOptions | None = None) -> Path:
    """Mount the image at *mountpoint*; returns the state directory."""
    mountpoint = mountpoint.resolve()
    if is_mounted(mountpoint):
        raise LazypullError(f"{mountpoint} is already a mount point; unmount it first")
    state = state_dir_for(mountpoint, opts.state_root)
    if state.exists():
        umount_image(mountpoint, opts.state_root)
    state.mkdir(parents=True, mode=0o700)
    subject = select_manifest(store, store.resolve(), None)
    manifest = Manifest.parse(store.fetch(subject), subject.media_type)
    kind = kind_of(manifest)  # an artifact (ModelPack, ORAS) mounts as its files, like a volume
    if kind == Kind.IMAGE:
        layers = soci_layers(store, manifest)
    else:
        layers = with_chunk_index(store, subject.digest, manifest.layers, kind)
    lowers: list[str] = []
    lazy: list[tuple[LayerSpec, Path]] = []
    record_layers: list[dict[str, object]] = []
    record: dict[str, object] = {"mountpoint": str(mountpoint), "layers": record_layers}
    try:
        for i, layer in enumerate(layers):
            ldir = state / f"layer{i}"
            ldir.mkdir(mode=0o700)
            if is_lazy(layer):
                lazy.append((layer_spec(store, layer, opts, ropts), ldir / "fs"))
                record_layers.append({"digest": layer.digest, "lazy": True, "dir": str(ldir)})
            elif not is_tar_layer(layer, kind):
                warn_streamed(layer, "downloading all of it", how="index the artifact with lazypull index create")
                write_file_layer(store, layer, ldir / "fs")
                record_layers.append({"digest": layer.digest, "lazy": False, "dir": str(ldir)})
            else:
                warn_streamed(layer, "downloading and unpacking all of it")
                root = RootDir(ldir / "fs")
                try:
                    apply_tar_layer(root, store, layer, overlay_lower=True)
                finally:
                    root.close()
                record_layers.append({"digest": layer.digest, "lazy": False, "dir": str(ldir)})
            lowers.append(str(ldir / "fs"))
            (state / "mount.json").write_text(json.dumps(record))
        if lazy:
            _mount_layers(layer_server(opts.state_root), lazy, opts)
            if not (opts.suid and opts.dev):  # only ever adds restrictions to a layer mount
                for _, mp in lazy:
                    _run_mount(["-o", f"remount,bind,ro,{opts.mount_flags}", str(mp)], "restricting a layer mount")
        mountpoint.mkdir(parents=True, exist_ok=True)
        if len(lowers) == 1:
            flags = f"ro,{opts.mount_flags}"
            _run_mount(["--bind", "-o", flags, lowers[0], str(mountpoint)], "mounting the image rootfs")
        else:
            lowerdir = "lowerdir=" + ":".join(reversed(lowers))
            _run_mount(
                ["-t", "overlay", "overlay", "-o", f"ro,{lowerdir},{opts.mount_flags}", str(mountpoint)],
                "mounting the image rootfs",
            )
        record["mounted"] = True
        (state / "mount.json").write_text(json.dumps(record))
    except BaseException:
        umount_image(mountpoint, opts.state_root)
        raise
    return state


def write_file_layer(store: ImageStore, layer: Descriptor, root: Path) -> None:
    """A raw artifact layer as a directory holding its one file (streamed, checked against
    the blob digest before the file gets its name)."""
    path = root / file_path(layer)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    os.chmod(root, 0o755)
    tmp = path.with_name(f".{path.name}.lazypull-tmp")
    with VerifyingReader(store.open_blob(layer), layer) as src, open(tmp, "xb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    os.chmod(tmp, 0o644)
    os.rename(tmp, path)


def _run_mount(args: list[str], what: str) -> None:
    res = subprocess.run(["mount", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise LazypullError(f"{what} failed: {res.stderr.strip()}")


def _mount_layers(client: FsdClient, lazy: list[tuple[LayerSpec, Path]], opts: MountOptions) -> None:
    """Mount the lazy layers in parallel, then wait (bounded) for their prefetch."""

    def one(item: tuple[LayerSpec, Path]) -> None:
        spec, mp = item
        _summary, fd = client.mount(spec.to_json(), mp, timeout=opts.fetch_timeout_sec + 30)
        if fd >= 0:
            os.close(fd)  # nobody holds a copy for a hand-made mount: it lives with its server

    # Not `with`: on Ctrl-C the caller must not wait for mounts still fetching their TOCs
    # (the server drops those when it is told to unmount them).
    pool = ThreadPoolExecutor(max_workers=8)
    try:
        for f in [pool.submit(one, item) for item in lazy]:
            f.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if not opts.prefetch:
        return
    mps = [str(mp) for _, mp in lazy]
    deadline = time.monotonic() + opts.prefetch_timeout_sec
    while time.monotonic() < deadline:
        rows = client.stats(mps)["layers"]
        if all(r.get("prefetch_done") for r in rows):
            return
        time.sleep(0.02)
    log.warning("prefetch not done within %ss; continuing", opts.prefetch_timeout_sec)


def umount_image(mountpoint: Path, state_root: Path = DEFAULT_STATE_ROOT) -> list[str]:
    """Remove the overlay, every layer mount, and the state directory.

    Returns the files read through a mount made with ``record_access``, layer by layer
    from the bottom, each layer's in the order of first read (the record file format's
    paths). The state root's layer server exits once it serves no layer.
    """
    mountpoint = mountpoint.resolve()
    state = state_dir_for(mountpoint, state_root)
    if is_mounted(mountpoint):
        try:
            unmount(str(mountpoint), lazy=False)
        except OSError as e:
            raise LazypullError(str(e.strerror or e)) from None
    if not state.exists():
        return []
    ldirs = sorted(state.glob("layer*"), key=lambda d: int(d.name[5:]) if d.name[5:].isdigit() else -1)
    client = layer_server(state_root, start=False)
    accessed: dict[str, None] = {}
    for ldir in ldirs:
        try:
            for path in client.unmount(ldir / "fs"):
                accessed.setdefault(path, None)
        except FsdError:
            if is_mounted(ldir / "fs") or _is_dead_mount(ldir / "fs"):
                unmount(str(ldir / "fs"))
    shutil.rmtree(state, ignore_errors=True)
    _stop_if_idle(client, state_root)
    return list(accessed)


def _stop_if_idle(client: FsdClient, root: Path) -> None:
    """Stop the state root's server once no mount uses it, and wait until it is gone (its fd
    holder too)."""
    try:
        if client.list():
            return
        pid = int((client.alive() or {}).get("pid") or 0)
        client.shutdown()
    except FsdError:
        return
    deadline = time.monotonic() + 10
    # Its socket goes quiet before its process ends (threads joined, mounts closed): wait for
    # the process, so that whoever unmounts can count on nothing of it being left.
    while client.alive(timeout=1.0) is not None or is_server_process(pid) or holder_running(root):
        if time.monotonic() > deadline:
            return
        time.sleep(0.02)


def _is_dead_mount(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def access_logs(mountpoint: Path, state_root: Path = DEFAULT_STATE_ROOT) -> list[tuple[str, list[list[object]]]]:
    """Per layer, bottom first: (digest, what was read through it) for a mount made with
    ``record_access``: ``[path, first-read wall clock, [[offset, length], ...]]`` in
    first-read order (none for a layer not mounted lazily)."""
    state = state_dir_for(mountpoint.resolve(), state_root)
    try:
        record = json.loads((state / "mount.json").read_text())
    except (OSError, ValueError):
        raise LazypullError(f"{mountpoint} is not mounted by lazypull") from None
    try:
        rows = layer_server(state_root, start=False).stats(accessed=True)["layers"]
    except FsdError as e:
        raise LazypullError(f"cannot read the access log of {mountpoint}: {e}") from None
    by_mp = {r["mountpoint"]: r for r in rows}
    out: list[tuple[str, list[list[object]]]] = []
    for layer in record["layers"]:
        st = by_mp.get(str(Path(layer["dir"]) / "fs")) if layer["lazy"] else None
        out.append((str(layer["digest"]), list((st or {}).get("access_log") or [])))
    return out


def mount_stats(mountpoint: Path, state_root: Path = DEFAULT_STATE_ROOT) -> list[dict[str, object]]:
    state = state_dir_for(mountpoint.resolve(), state_root)
    try:
        record = json.loads((state / "mount.json").read_text())
    except (OSError, ValueError):
        raise LazypullError(f"{mountpoint} is not mounted by lazypull") from None
    try:
        rows = layer_server(state_root, start=False).stats()["layers"]
    except FsdError:
        rows = []
    by_mp = {r["mountpoint"]: r for r in rows}
    out = []
    for layer in record["layers"]:
        st = by_mp.get(str(Path(layer["dir"]) / "fs")) if layer["lazy"] else None
        out.append({"digest": layer["digest"], "lazy": layer["lazy"], **(st or {})})
    return out
