"""The hostile-image corpus: crafted layer blobs that a registry could serve us.

Layers are built byte by byte (gzip members, a hand-written TOC, the footer), not by the
converter, which refuses most of these inputs; every blob stays well under 10 MB.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazypull.format.estargz_writer import padding, tar_header
from lazypull.format.footer import estargz_footer
from lazypull.format.gzipmember import compress_member
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.layout import OCILayout
from lazypull.oci.types import Descriptor, Manifest, host_platform
from tests.support.images import Entry, make_tar

REPO = Path(__file__).resolve().parents[2]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@functools.cache  # compressing GiBs of zeros takes seconds: once per size per session
def zeros_member(n: int) -> bytes:
    """One gzip member inflating to *n* zero bytes, ~1/1000 of n (deflate's best ratio)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    parts = []
    left = n
    while left:
        k = min(left, len(block))
        parts.append(c.compress(block[:k]))
        left -= k
    parts.append(c.flush())
    return b"".join(parts)


@dataclass
class CraftedLayer:
    """An eStargz blob whose TOC says whatever the test wants."""

    body: bytearray = field(default_factory=bytearray)
    entries: list[dict[str, Any]] = field(default_factory=list)

    def member(self, raw: bytes) -> int:
        """Append raw (already compressed) bytes; returns their blob offset."""
        off = len(self.body)
        self.body += raw
        return off

    def file(self, name: str, data: bytes, **override: Any) -> dict[str, Any]:
        """A well-formed one-chunk regular file; *override* replaces TOC fields."""
        off = self.member(compress_member(data, 6))
        e = {"name": name, "type": "reg", "size": len(data), "offset": off, "digest": sha(data)}
        e["chunkDigest"] = e["digest"]
        e.update(override)
        self.entries.append(e)
        return e

    def add(self, **entry: Any) -> None:
        self.entries.append(entry)

    def blob(self) -> tuple[bytes, str]:
        """(blob, TOC digest)."""
        if not self.body:
            self.member(compress_member(b"\0" * 512, 6))
        toc_json = json.dumps({"version": 1, "entries": self.entries}, separators=(",", ":")).encode()
        return blob_around_toc(bytes(self.body), toc_json), sha(toc_json)


def blob_around_toc(body: bytes, toc_json: bytes) -> bytes:
    ti = tarfile.TarInfo("stargz.index.json")
    ti.size = len(toc_json)
    toc = compress_member(tar_header(ti) + toc_json + padding(len(toc_json)) + b"\0" * 1024, 6)
    return body + toc + estargz_footer(len(body))


def esgz_layer(blob: bytes, toc_digest: str) -> tuple[bytes, dict[str, str]]:
    return blob, {mt.ANNOTATION_TOC_DIGEST: toc_digest}


def tar_layer(entries: list[Entry]) -> tuple[bytes, dict[str, str]]:
    return gzip.compress(make_tar(entries), mtime=0), {}


def wide_layer(entries: int, name: str = "f") -> CraftedLayer:
    """A layer whose TOC lists *entries* empty files in one directory (little blob, big index);
    *name* keeps the files of layers apart (no two layers share an index)."""
    c = CraftedLayer()
    c.add(name="d/", type="dir", mode=0o755)
    for n in range(entries - 1):
        c.add(name=f"d/{name}-{n}", type="reg", size=0, mode=0o644)
    return c


def write_blob(where: Path, name: str, layer: CraftedLayer) -> tuple[Path, dict[str, Any]]:
    """*layer*'s blob as the file WHERE/NAME.blob, and its descriptor."""
    blob, toc = layer.blob()
    path = where / f"{name}.blob"
    path.write_bytes(blob)
    return path, {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": sha(blob),
        "size": len(blob),
        "annotations": {mt.ANNOTATION_TOC_DIGEST: toc},
    }


def write_crafted_image(root: Path, layers: list[tuple[bytes, dict[str, str]]], tag: str = "latest") -> str:
    """An OCI layout holding *layers* (blob, annotations) as given; returns ``oci:ROOT:TAG``.

    Diff IDs are not computed (a bomb would have to be inflated): nothing that reads
    these images uses them."""
    layout = OCILayout(root, create=True)
    descs = []
    for blob, ann in layers:
        d = Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(blob), len(blob), annotations=ann)
        layout.push_bytes(d, blob)
        descs.append(d)
    plat = host_platform()
    config = {
        "architecture": plat.architecture,
        "os": plat.os,
        "rootfs": {"type": "layers", "diff_ids": [sha(b"") for _ in layers]},
    }
    cfg = json.dumps(config).encode()
    cfg_desc = Descriptor(mt.OCI_CONFIG, digestlib.of_bytes(cfg), len(cfg))
    layout.push_bytes(cfg_desc, cfg)
    data = Manifest(cfg_desc, descs).to_bytes()
    layout.push_manifest(Descriptor(mt.OCI_MANIFEST, digestlib.of_bytes(data), len(data)), data, tag=tag)
    return f"oci:{root}:{tag}"


@dataclass
class CliRun:
    rc: int
    output: str  # stdout and stderr
    peak_rss_mb: float


_RUNNER = """
import sys
from lazypull.cli.main import main
try:
    rc = main(sys.argv[1:])
finally:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print("VMHWM", int(line.split()[1]), file=sys.stderr)
sys.exit(rc)
"""


def run_cli(args: list[str], *, cwd: Path | None = None, timeout: float = 120) -> CliRun:
    """``lazypull ARGS`` in a fresh interpreter; its exit code, stderr and peak RSS (VmHWM)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run(
        [sys.executable, "-c", _RUNNER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    lines = (p.stdout + p.stderr).splitlines()
    peak = next((int(x.split()[1]) for x in lines if x.startswith("VMHWM ")), -1)
    rest = "\n".join(x for x in lines if not x.startswith("VMHWM "))
    return CliRun(p.returncode, rest, peak / 1024)


def run_in_process(args: list[str], capsys: Any) -> CliRun:
    """``lazypull ARGS`` in this process (fast; a traceback fails the test by itself)."""
    from lazypull.cli.main import main

    capsys.readouterr()
    rc = main(args)
    out = capsys.readouterr()
    return CliRun(rc, out.out + out.err, -1.0)


def assert_one_line_error(run: CliRun, *fragments: str) -> None:
    """Failed, said why on one line (``lazypull: error:`` or check's ``FAIL``), no traceback."""
    assert run.rc != 0, run.output
    assert "Traceback" not in run.output, run.output
    errors = [x for x in run.output.splitlines() if x.startswith("lazypull: error:") or "\tFAIL " in x]
    assert len(errors) == 1, run.output
    for f in fragments:
        assert f in errors[0], (f, run.output)
