"""``profile record``: run an image's workload once on a lazy mount, as ``optimize`` does,
and keep what it read as a prefetch profile instead of converting the image.

The mount is ``optimize``'s trial conversion of the image, whose layers are the image's
in the same order with the same files; the profile names the image's own layers (its
manifest is the profile's subject), and its ranges are offsets in the files' content,
the same in every format.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lazypull.errors import LazypullError
from lazypull.imagefs.rootfs import access_logs
from lazypull.oci.store import ImageStore
from lazypull.oci.types import Descriptor, Manifest
from lazypull.optimize.optimizer import OptimizeOptions, record_workload, trial_image
from lazypull.optimize.workload import RunResult
from lazypull.prefetch.profile import MAX_FILES, FileAccess, Profile, merge_ranges, normalize_path

AccessLogs = list[tuple[str, list[list[object]]]]


def profile_from_logs(image: str, layers: list[str], logs: AccessLogs) -> Profile:
    """A profile of *image* (manifest digest) from a mount's access logs, one per layer of
    *layers* (the image's layer digests, bottom first); times count from the first read."""
    if len(logs) != len(layers):
        raise LazypullError(f"the recording mount had {len(logs)} layers, the image {len(layers)}")
    starts = [float(row[1]) for _, rows in logs for row in rows]  # type: ignore[arg-type]
    t0 = min(starts, default=0.0)
    entries: list[tuple[float, str, FileAccess]] = []
    for digest, (_, rows) in zip(layers, logs, strict=True):
        for path, t, ranges in rows:
            spans = [(int(o), int(n)) for o, n in ranges]  # type: ignore[attr-defined]
            f = FileAccess(normalize_path(str(path)), max(0.0, float(t) - t0), merge_ranges(spans))  # type: ignore[arg-type]
            entries.append((f.t, digest, f))
    profile = Profile(image)
    for _, digest, f in sorted(entries, key=lambda x: x[0])[:MAX_FILES]:
        profile.layers.setdefault(digest, []).append(f)
    return profile


def record_profile(
    src: ImageStore, image: Descriptor, manifest: Manifest, opts: OptimizeOptions
) -> tuple[Profile, RunResult]:
    """Run the workload on *src* (whose manifest is *image*, *manifest*) and return its profile."""
    if opts.workdir is not None:
        opts.workdir.mkdir(parents=True, exist_ok=True)
    logs: AccessLogs = []
    with tempfile.TemporaryDirectory(prefix="lazypull-profile-", dir=opts.workdir) as t:
        tmp = Path(t)
        os.chmod(tmp, 0o700)
        _, trial = trial_image(src, opts, tmp)
        _, run = record_workload(trial, opts, tmp, before_umount=lambda mp, root: logs.extend(access_logs(mp, root)))
    profile = profile_from_logs(image.digest, [d.digest for d in manifest.layers], logs)
    opts.progress(f"recorded {profile.file_count} files in {sum(1 for f in profile.layers.values() if f)} layers")
    return profile, run
