"""``optimize``: convert an image with the files its workload reads at start-up prioritized.

The workload runs once, for real, on the image mounted lazily with access recording on
(the same FUSE layers the snapshotter uses, so what is recorded is exactly what a lazy
start reads). A throw-away conversion (gzip level 0: it is only read locally) in a
private temp layout gives that mount; the final conversion then puts the recorded files
first in each layer, before the ``.prefetch.landmark``, so the snapshotter prefetches
them in one request per layer. A registry source is downloaded once, for both.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lazypull.convert.check import manifests_of
from lazypull.convert.copy import copy_image
from lazypull.convert.image import ConvertOptions, convert_image
from lazypull.errors import LazypullError
from lazypull.format.index import normalize
from lazypull.fs.fuse.server import is_mounted, unmount
from lazypull.imagefs.rootfs import MountOptions, mount_image, umount_image
from lazypull.oci.layout import OCILayout
from lazypull.oci.store import ImageStore
from lazypull.oci.types import Descriptor, ImageConfig
from lazypull.optimize.workload import RunResult, RuntimeSpec, Workload, run_workload

log = logging.getLogger(__name__)


@dataclass
class OptimizeOptions:
    convert: ConvertOptions = field(default_factory=ConvertOptions)  # the final conversion
    period: float = 10.0  # seconds the workload may run before it is stopped
    entrypoint: list[str] | None = None
    args: list[str] | None = None
    env: list[str] = field(default_factory=list)
    cwd: str | None = None
    network: str = "none"
    workdir: Path | None = None  # where the trial image, mounts and container live (temp)
    runc: str = "runc"
    progress: Callable[[str], None] = field(default=lambda msg: None, repr=False)


@dataclass
class OptimizeResult:
    descriptor: Descriptor
    record: list[str]  # the prioritized files, as absolute paths in first-read order
    run: RunResult


def record_workload(
    store: ImageStore, opts: OptimizeOptions, tmp: Path, before_umount: Callable[[Path, Path], None] | None = None
) -> tuple[list[str], RunResult]:
    """Run the workload on *store*'s image (lazily mounted, recording reads); return what it read.

    *before_umount* (mountpoint, state root) is called once the workload is done, while the
    mount and its access log are still there."""
    config = ImageConfig.parse(store.fetch(next(iter(manifests_of(store, None, False))).config)).raw
    workload = Workload.from_config(
        config, entrypoint=opts.entrypoint, args=opts.args, env=opts.env, cwd=opts.cwd, network=opts.network
    )
    image, rootfs, state_root = tmp / "image", tmp / "rootfs", tmp / "mounts"
    for d in (tmp / "upper", tmp / "work", rootfs):
        d.mkdir(mode=0o755)  # the upper dir's mode is the container's "/" (tmp itself is 0700)
    mount_image(
        store,
        image,
        MountOptions(
            prefetch=False,
            background_fetch=False,  # only what the workload reads is fetched, so only that is recorded
            cache_dir=tmp / "cache",
            state_root=state_root,
            record_access=True,
        ),
    )
    try:
        # A writable container root on top of the read-only lazy image, as containerd gives one.
        layers = f"lowerdir={image},upperdir={tmp / 'upper'},workdir={tmp / 'work'}"
        cmd = ["mount", "-t", "overlay", "overlay", "-o", layers, str(rootfs)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise LazypullError(f"cannot mount the container's writable root: {res.stderr.strip()}")
        try:
            opts.progress(f"running {json.dumps(workload.args)} for up to {opts.period:g}s")
            run = run_workload(RuntimeSpec(workload, rootfs), tmp / "bundle", opts.period, runc=opts.runc)
        finally:
            if is_mounted(rootfs):
                unmount(str(rootfs), lazy=False)
    finally:
        try:
            if before_umount is not None:
                before_umount(image, state_root)
        finally:
            record = umount_image(image, state_root)
    return record, run


def trial_image(src: ImageStore, opts: OptimizeOptions, tmp: Path) -> tuple[ImageStore, OCILayout]:
    """(a local copy of *src*, a throw-away conversion of it to mount): the source is
    downloaded once, as the final conversion reads it too."""
    plats = opts.convert.platforms
    if not isinstance(src, OCILayout):
        opts.progress(f"copying {src.name} locally")
        local = OCILayout(tmp / "source", "source", create=True)
        copy_image(src, local, tag="source", platform=plats[0] if plats else None, all_platforms=False)
        src = local
    opts.progress("converting a trial copy to mount (uncompressed: only read locally)")
    trial = OCILayout(tmp / "trial", "trial", create=True)
    trial_opts = dataclasses.replace(
        opts.convert, compression_level=0, prioritized=None, progress=None, tmpdir=str(tmp)
    )
    convert_image(src, trial, trial_opts, tag="trial")
    return src, trial


def optimize_image(src: ImageStore, dst: ImageStore, opts: OptimizeOptions, tag: str | None = None) -> OptimizeResult:
    plats = opts.convert.platforms
    if opts.convert.all_platforms or (plats and len(plats) > 1):
        raise LazypullError("optimize runs the workload, so it converts one platform (this machine's by default)")
    if opts.workdir is not None:
        opts.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lazypull-optimize-", dir=opts.workdir) as t:
        tmp = Path(t)
        os.chmod(tmp, 0o700)
        src, trial = trial_image(src, opts, tmp)
        record, run = record_workload(trial, opts, tmp)
        if not record:
            log.warning("the workload read no files; the image is converted without prioritized files")
        opts.progress(f"recorded {len(record)} files; converting with them prioritized")
        final = dataclasses.replace(opts.convert, prioritized=[normalize(p) for p in record], force=True)
        desc = convert_image(src, dst, final, tag=tag)
    return OptimizeResult(desc, record, run)


def write_record(path: Path, record: list[str]) -> None:
    """The reference's record format: one ``{"path": ...}`` JSON object per line."""
    path.write_text("".join(json.dumps({"path": p}) + "\n" for p in record))
