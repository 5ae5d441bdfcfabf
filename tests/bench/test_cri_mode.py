"""The benchmark's cri mode: its pause image is built locally and runs as a sandbox would."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

from lazypull.bench.cri import build_pause
from lazypull.oci.types import Manifest


def test_pause_image_is_static_busybox_sleeping(tmp_path: Path) -> None:
    layout = build_pause(tmp_path)
    d = layout.resolve()
    m = Manifest.parse(layout.fetch(d), d.media_type)
    cfg = json.loads(layout.fetch(m.config))
    assert cfg["config"]["Entrypoint"][0] == "/bin/sleep"
    with layout.open_blob(m.layers[0]) as f, tarfile.open(fileobj=io.BytesIO(gzip.decompress(f.read()))) as tf:
        names = {n.lstrip("./"): tf.getmember(n) for n in tf.getnames()}
    assert names["bin/sleep"].issym() and names["bin/sleep"].linkname == "busybox"
    assert names["bin/busybox"].isfile() and names["bin/busybox"].size > 100_000
    assert build_pause(tmp_path).resolve() == d  # cached
