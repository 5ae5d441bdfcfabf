"""Benchmark images, built reproducibly from Debian packages and generated data.

A base root filesystem comes from debootstrap (cached per package set); payload
layers are generated from a fixed seed. Each image is pushed as published (gzip),
converted to eStargz, and (given a record of the files its workload reads) optimized.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lazypull.errors import LazypullError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.layout import OCILayout
from lazypull.oci.types import Descriptor, Manifest, host_platform

log = logging.getLogger(__name__)
MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class BenchImage:
    name: str
    packages: tuple[str, ...]
    workload: tuple[str, ...]
    expect: str  # text the workload prints (HelloBench: time until it appears)
    payload: Callable[[Path, float], None] | None = None
    build_as: str = ""  # share another image's build (same content, different workload)

    @property
    def build_name(self) -> str:
        return self.build_as or self.name


def _seed_payload(root: Path, scale: float) -> None:
    """Twenty 50 MB files of random base64 text (the seed's EKS demo)."""
    rnd = random.Random(1)
    size = max(1 << 20, int(50_000_000 * scale))
    (root / "data").mkdir(parents=True, exist_ok=True)
    for i in range(20):
        raw = rnd.randbytes(size * 3 // 4)
        (root / "data" / f"file-{i:02d}.txt").write_bytes(base64.encodebytes(raw)[:size])


def _small_files_payload(root: Path, scale: float) -> None:
    """A node_modules-like tree: tens of thousands of small files."""
    rnd = random.Random(2)
    n = max(1000, int(30_000 * scale))
    base = root / "app" / "node_modules"
    for i in range(n):
        d = base / f"pkg-{i // 10}"
        d.mkdir(parents=True, exist_ok=True)
        name = "index.js" if i % 10 == 0 else f"lib-{i % 10}.js"
        (d / name).write_text(f"// package {i}\nmodule.exports = {rnd.random()!r};\n" * rnd.randint(1, 40))
    (base / "pkg-1" / "package.json").write_text('{"name": "pkg-1"}\n')


IMAGES = {
    "seed-large": BenchImage("seed-large", ("vim",), ("sh", "-c", "echo ready"), "ready", _seed_payload),
    "seed-read": BenchImage(
        "seed-read",
        ("vim",),
        ("sh", "-c", "md5sum /data/file-00.txt /data/file-01.txt"),
        "file-01",
        _seed_payload,
        build_as="seed-large",
    ),
    "python": BenchImage("python", ("python3",), ("python3", "-c", "print('hello')"), "hello"),
    "ml": BenchImage(
        "ml",
        ("python3", "python3-numpy", "python3-scipy"),
        ("python3", "-c", "import numpy, scipy; print('ml', numpy.__version__, scipy.__version__)"),
        "ml",
    ),
    "small-files": BenchImage(
        "small-files",
        (),
        (
            "sh",
            "-c",
            "cat /app/node_modules/pkg-1/index.js "
            "/app/node_modules/pkg-1/package.json /app/node_modules/pkg-2/index.js >/dev/null; "
            "echo done",
        ),
        "done",
        _small_files_payload,
    ),
}


def base_tar(work: Path, packages: tuple[str, ...]) -> Path:
    """Where :func:`base_rootfs` caches the tree for *packages*."""
    return work / f"base-{hashlib.sha256(','.join(sorted(packages)).encode()).hexdigest()[:12]}.tar"


def base_rootfs(work: Path, packages: tuple[str, ...]) -> Path:
    """A debootstrap'd bookworm (minbase + packages) as a tar, cached."""
    tar = base_tar(work, packages)
    key = tar.stem.removeprefix("base-")
    if tar.exists():
        return tar
    root = work / f"base-{key}"
    shutil.rmtree(root, ignore_errors=True)
    cmd = ["debootstrap", "--variant=minbase"]
    if packages:
        cmd.append("--include=" + ",".join(packages))
    cmd += ["bookworm", str(root), MIRROR]
    log.info("debootstrap %s (a few minutes, cached afterwards)", " ".join(packages) or "minbase")
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise LazypullError(f"debootstrap failed: {res.stderr.strip()[-500:]}")
    for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
        shutil.rmtree(root / d, ignore_errors=True)
    _tar_dir(root, tar)
    shutil.rmtree(root, ignore_errors=True)
    return tar


def _tar_dir(root: Path, tar: Path) -> None:
    tmp = tar.with_suffix(".tmp")
    subprocess.run(
        ["tar", "--numeric-owner", "--sort=name", "--mtime=2024-01-01", "-C", str(root), "-cf", str(tmp), "."],
        check=True,
    )
    tmp.rename(tar)


def _gzip_layer(tar: Path, layout: OCILayout) -> tuple[Descriptor, str]:
    diff = digestlib.Digester()
    with open(tar, "rb") as f:
        while chunk := f.read(1 << 20):
            diff.update(chunk)
    gz = tar.with_suffix(".tar.gz")
    with open(gz, "wb") as out:
        subprocess.run(["gzip", "-6", "-n", "-c", str(tar)], stdout=out, check=True)
    with open(gz, "rb") as f:
        d = Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_file(f), gz.stat().st_size)
    layout.add_blob_file(gz, d)
    return d, diff.digest()


def build_image(img: BenchImage, work: Path, scale: float) -> OCILayout:
    """The image as an OCI layout (cached under *work* per image and scale)."""
    out = work / f"{img.build_name}-{scale:g}"
    if (out / "index.json").exists():
        return OCILayout(out, "latest")
    layers = [base_rootfs(work, img.packages)]
    if img.payload:
        pdir = work / f"{img.build_name}-{scale:g}-payload"
        shutil.rmtree(pdir, ignore_errors=True)
        img.payload(pdir, scale)
        ptar = work / f"{img.build_name}-{scale:g}-payload.tar"
        _tar_dir(pdir, ptar)
        shutil.rmtree(pdir)
        layers.append(ptar)
    tmp_out = out.with_suffix(".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    layout = OCILayout(tmp_out, create=True)
    descs, diff_ids = [], []
    for t in layers:
        d, diff = _gzip_layer(t, layout)
        descs.append(d)
        diff_ids.append(diff)
    plat = host_platform()
    cfg = json.dumps(
        {
            "architecture": plat.architecture,
            "os": "linux",
            "config": {
                "Cmd": list(img.workload),
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    cd = Descriptor(mt.OCI_CONFIG, digestlib.of_bytes(cfg), len(cfg))
    layout.push_bytes(cd, cfg)
    m = Manifest(cd, descs).to_bytes()
    md = Descriptor(mt.OCI_MANIFEST, digestlib.of_bytes(m), len(m), platform=plat)
    layout.push_manifest(md, m, tag="latest")
    for t in layers[1:]:
        t.unlink(missing_ok=True)
    tmp_out.rename(out)
    return OCILayout(out, "latest")
