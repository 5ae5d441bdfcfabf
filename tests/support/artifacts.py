"""Push OCI artifacts (ModelPack models, ORAS-style file sets) to a test registry.

Written with lazypull's own registry client; tests of artifacts written by other tools
(``oras``, ``olot``) use those tools instead.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field

import numpy as np

from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor, dump_json
from lazypull.registry.options import RegistryOptions
from lazypull.registry.repository import RegistryStore

WEIGHT_RAW = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_TAR = "application/vnd.cncf.model.weight.v1.tar"
WEIGHT_CONFIG_RAW = "application/vnd.cncf.model.weight.config.v1.raw"
DOC_TAR_GZIP = "application/vnd.cncf.model.doc.v1.tar+gzip"


@dataclass
class Layer:
    data: bytes
    media_type: str = WEIGHT_RAW
    annotations: dict[str, str] = field(default_factory=dict)


def modelpack_file(path: str, data: bytes, media_type: str = WEIGHT_RAW) -> Layer:
    return Layer(data, media_type, {mt.ANNOTATION_MODELPACK_FILEPATH: path})


def oras_file(name: str, data: bytes, media_type: str = "application/octet-stream") -> Layer:
    return Layer(data, media_type, {mt.ANNOTATION_TITLE: name})


def tar_of(files: dict[str, bytes], gzip: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gzip else "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def push_artifact(
    host: str,
    repo: str,
    layers: list[Layer],
    *,
    artifact_type: str | None = mt.MODELPACK_MANIFEST,
    config_type: str = mt.MODELPACK_CONFIG,
    config: bytes = b'{"descriptor": {"name": "tiny"}, "modelfs": {"type": "layers", "diffIds": []}}',
    tag: str = "v1",
) -> str:
    """Push the blobs and the manifest; returns the reference ``HOST/REPO:TAG``."""
    ref = f"{host}/{repo}:{tag}"
    store = RegistryStore.open(ref, RegistryOptions(plain_http=True))
    descs = []
    for layer in layers:
        d = Descriptor(layer.media_type, digestlib.of_bytes(layer.data), len(layer.data), dict(layer.annotations))
        store.push_bytes(d, layer.data)
        descs.append(d)
    cfg = Descriptor(config_type, digestlib.of_bytes(config), len(config))
    store.push_bytes(cfg, config)
    obj: dict[str, object] = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST}
    if artifact_type:
        obj["artifactType"] = artifact_type
    obj["config"] = cfg.to_json()
    obj["layers"] = [d.to_json() for d in descs]
    doc = dump_json(obj)
    store.push_manifest(Descriptor(mt.OCI_MANIFEST, digestlib.of_bytes(doc), len(doc)), doc, tag=tag)
    return ref


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file, written by the ``safetensors`` package."""
    from safetensors.numpy import save

    return bytes(save(tensors, metadata=metadata))


def header_size(data: bytes) -> int:
    """Bytes of a safetensors file before its first tensor (length prefix + JSON header)."""
    return 8 + int.from_bytes(data[:8], "little")


def tensor_span(data: bytes, name: str) -> tuple[int, int]:
    """File offsets [start, end) of tensor *name*."""
    header = json.loads(data[8 : header_size(data)])
    start, end = header[name]["data_offsets"]
    return header_size(data) + start, header_size(data) + end
