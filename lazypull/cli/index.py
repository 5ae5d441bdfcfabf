"""``lazypull index create``: chunk digests of an artifact's raw blobs (model weights), pushed
beside it so its files are read lazily and verified chunk by chunk."""

from __future__ import annotations

import argparse
import sys

from lazypull.errors import ConfigError, LazypullError
from lazypull.format.chunklist import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, BlobChunks
from lazypull.registry.options import add_registry_args, options_from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("index", help="chunk indexes: lazy, verified reads of artifacts' raw files", description=__doc__)
    s = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    c = s.add_parser("create", help="digest an artifact's raw blobs by chunk and push the index beside it")
    c.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="bytes per verified chunk (1 MiB)")
    add_registry_args(c)
    c.add_argument("ref", help="a registry reference of an artifact (ModelPack, ORAS)")
    c.set_defaults(func=run_create)


def _report(b: BlobChunks) -> None:
    print(f"blob {b.digest}: {len(b.chunks)} chunks of {b.chunk_size} bytes", file=sys.stderr)


def run_create(args: argparse.Namespace) -> int:
    from lazypull.chunkindex.create import create_chunk_index
    from lazypull.oci.types import Manifest
    from lazypull.registry.repository import RegistryStore

    if not MIN_CHUNK_SIZE <= args.chunk_size <= MAX_CHUNK_SIZE:
        raise ConfigError(f"--chunk-size must be within [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")
    if args.ref.startswith("oci:"):
        raise LazypullError("chunk indexes live in a registry (found through OCI referrers); give a registry reference")
    store = RegistryStore.open(args.ref, options_from_args(args))
    subject = store.resolve()
    manifest = Manifest.parse(store.fetch(subject), subject.media_type)
    desc, how = create_chunk_index(store, subject, manifest, chunk_size=args.chunk_size, progress=_report)
    print(desc.digest)
    via = "referrers API" if how == "api" else "referrers tag schema"
    print(f"chunk index of {subject.digest} pushed ({via}); the artifact is unchanged", file=sys.stderr)
    return 0
