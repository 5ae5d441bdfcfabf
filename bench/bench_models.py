"""A 2 GB safetensors model as a ModelPack artifact over a shaped link: lazy vs full download.

    sudo .venv/bin/python bench/bench_models.py [--gb 2] [--rate 150mbit] [--tensors 512]

A registry runs in its own network namespace behind ``tc tbf`` (lazypull.bench.netns, as
``lazypull bench`` does). The model (random float32 weights, a weight and a bias per layer)
is written straight to disk, pushed as a ModelPack artifact (one raw weight layer) and
indexed by chunk from the local file (a publisher has it; ``lazypull index create`` would
read it back through the shaped link). Then, each with an empty cache, timed and with the
bytes the node received (interface counters, headers included):

- full: ``oras pull`` (the oras Python SDK) of the artifact;
- one tensor: open_image + load_tensors of one weight in the middle of the file;
- first 10%: load_tensors of the first tenth of the tensors (coalesced ranges);
- all: ImageFS.fetch of the file (parallel verified ranges, whole-file digest checked),
  then every tensor as an array from the cache.

Prints one JSON object. Needs root (network namespaces, tc).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lazypull.bench.netns import ShapedNet
from lazypull.bench.runner import Registry
from lazypull.chunkindex.create import push_chunk_index, safetensors_head
from lazypull.format.chunklist import DEFAULT_CHUNK_SIZE, digest_chunks
from lazypull.imagefs import open_image
from lazypull.models import load_tensors
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor, dump_json
from lazypull.registry.options import RegistryOptions
from lazypull.registry.repository import RegistryStore

WEIGHT_RAW = "application/vnd.cncf.model.weight.v1.raw"


def write_model(path: Path, total: int, layers: int) -> list[str]:
    """A safetensors file of *layers* (weight, bias) pairs, ~*total* bytes; returns tensor names."""
    bias = 4096
    weight = (total // layers - bias * 4) // 4 * 4
    header: dict[str, object] = {"__metadata__": {"format": "np"}}
    names, off = [], 0
    for i in range(layers):
        for name, nbytes, shape in (
            (f"layers.{i:04d}.weight", weight, [weight // 4]),
            (f"layers.{i:04d}.bias", bias * 4, [bias]),
        ):
            header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + nbytes]}
            names.append(name)
            off += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head)
        left = off
        while left:
            n = min(left, 16 << 20)
            f.write(os.urandom(n))
            left -= n
    return names


def push_model(host: str, path: Path) -> str:
    ref = f"{host}/models/big:v1"
    store = RegistryStore.open(ref, RegistryOptions(plain_http=True))
    with open(path, "rb") as f:
        desc = Descriptor(
            WEIGHT_RAW,
            digestlib.of_file(f),
            path.stat().st_size,
            {mt.ANNOTATION_MODELPACK_FILEPATH: "model.safetensors", mt.ANNOTATION_TITLE: "model.safetensors"},
        )
        f.seek(0)
        store.push_blob(desc, f)
        f.seek(0)
        head = safetensors_head(f.read(9), desc.size)  # the header: a chunk of its own, as index create makes it
        f.seek(0)
        blob = digest_chunks(f, desc, DEFAULT_CHUNK_SIZE, head)
    config = b'{"descriptor": {"name": "big"}, "modelfs": {"type": "layers", "diffIds": []}}'
    cfg = Descriptor(mt.MODELPACK_CONFIG, digestlib.of_bytes(config), len(config))
    store.push_bytes(cfg, config)
    doc = dump_json(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": mt.MODELPACK_MANIFEST,
            "config": cfg.to_json(),
            "layers": [desc.to_json()],
        }
    )
    subject = Descriptor(mt.OCI_MANIFEST, digestlib.of_bytes(doc), len(doc))
    store.push_manifest(subject, doc, tag="v1")
    push_chunk_index(store, subject, [blob])
    return ref


def measure(net: ShapedNet, fn: object) -> dict[str, float]:
    assert callable(fn)
    rx0, t0 = net.rx_bytes(), time.monotonic()
    fn()
    return {"seconds": round(time.monotonic() - t0, 2), "bytes": net.rx_bytes() - rx0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--rate", default="150mbit")
    ap.add_argument("--layers", type=int, default=256, help="weight+bias pairs (tensors: twice this)")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="lazypull-bench-models-"))
    net = ShapedNet(rate=args.rate, subnet=214).create()
    reg = Registry(net, work / "registry")
    try:
        model = work / "model.safetensors"
        names = write_model(model, int(args.gb * 1e9), args.layers)
        ref = push_model(reg.host, model)
        size = model.stat().st_size
        with open(model, "rb") as f:
            header = 8 + int.from_bytes(f.read(8), "little")
        one = names[len(names) // 2 & ~1]  # a weight in the middle
        res: dict[str, object] = {"model_bytes": size, "tensors": len(names), "rate": args.rate}
        res["header_bytes"] = header
        res["chunk_size"] = DEFAULT_CHUNK_SIZE

        def full() -> None:
            import oras.client

            oras.client.OrasClient(insecure=True).pull(target=ref, outdir=str(work / "pulled"))

        res["full_oras_pull"] = measure(net, full)
        kw = {"plain_http": True}

        def one_tensor() -> None:
            with load_tensors(ref, "model.safetensors", [one], cache_dir=work / "c1", **kw) as t:
                assert t[one].nbytes > 0
                res["one_tensor_size"] = t.infos[one].nbytes
                res["one_tensor_blob_bytes"] = t.image.stats().bytes_fetched
                res["one_tensor_goal_bytes"] = t.infos[one].nbytes + header + 2 * DEFAULT_CHUNK_SIZE

        res["one_tensor"] = measure(net, one_tensor)

        def tenth() -> None:
            with load_tensors(ref, "model.safetensors", names[: len(names) // 10], cache_dir=work / "c2", **kw) as t:
                res["tenth_size"] = sum(i.nbytes for i in t.infos.values())
                res["tenth_blob_bytes"] = t.image.stats().bytes_fetched

        res["first_10pct"] = measure(net, tenth)

        def everything() -> None:
            with open_image(ref, cache_dir=work / "c3", **kw) as img:
                img.fetch("model.safetensors")

        res["all_fetch"] = measure(net, everything)

        def arrays() -> None:
            with load_tensors(ref, "model.safetensors", cache_dir=work / "c3", **kw) as t:
                for name in t:
                    t[name]

        res["all_arrays_from_cache"] = measure(net, arrays)
        full_s = res["full_oras_pull"]["seconds"]  # type: ignore[index]
        res["all_vs_full"] = round(res["all_fetch"]["seconds"] / full_s, 3)  # type: ignore[index]
        print(json.dumps(res, indent=2))
    finally:
        reg.stop()
        net.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
