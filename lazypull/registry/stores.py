"""Open an image location from a reference string: ``oci:DIR[:TAG]`` or a registry ref."""

from __future__ import annotations

import argparse

from lazypull.oci.dockerarchive import PREFIX, DockerArchive
from lazypull.oci.layout import OCILayout
from lazypull.oci.store import ImageStore
from lazypull.registry.options import RegistryOptions, add_registry_args, options_from_args


def open_store(ref: str, opts: RegistryOptions | None = None, *, for_push: bool = False) -> ImageStore:
    if ref.startswith("oci:"):
        return OCILayout.from_ref(ref, create=for_push)
    if ref.startswith(PREFIX):
        return DockerArchive.from_ref(ref, create=for_push)
    from lazypull.registry.repository import RegistryStore  # the HTTP stack: only for registries

    return RegistryStore.open(ref, opts, for_push=for_push)


def add_src_dst_args(p: argparse.ArgumentParser) -> None:
    """Registry flags plus the SRC and DST positionals of the commands that write an image."""
    add_registry_args(p)
    p.add_argument("src", help="oci:DIR[:TAG], docker-archive:PATH[:REF] or a registry reference")
    p.add_argument("dst", help="oci:DIR[:TAG], docker-archive:PATH[:REF] or a registry reference")


def open_src_dst(args: argparse.Namespace) -> tuple[ImageStore, ImageStore]:
    """Both ends; a registry destination must answer before any work is done for it."""
    ropts = options_from_args(args)
    src, dst = open_store(args.src, ropts), open_store(args.dst, ropts, for_push=True)
    if not isinstance(dst, OCILayout | DockerArchive):
        from lazypull.registry.repository import RegistryStore

        assert isinstance(dst, RegistryStore)
        dst.client.check_reachable(dst.ref)
    return src, dst
