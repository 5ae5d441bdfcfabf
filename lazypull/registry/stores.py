"""Open an image location from a reference string: ``oci:DIR[:TAG]`` or a registry ref."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lazypull.errors import LazypullError
from lazypull.oci.layout import OCILayout
from lazypull.oci.store import ImageStore

if TYPE_CHECKING:
    from lazypull.registry.options import RegistryOptions


def open_store(ref: str, opts: RegistryOptions | None = None, *, for_push: bool = False) -> ImageStore:
    if ref.startswith("oci:"):
        return OCILayout.from_ref(ref, create=for_push)
    try:
        from lazypull.registry.repository import RegistryStore
    except ModuleNotFoundError:
        raise LazypullError(f"{ref!r}: registry references are not supported yet; use oci:DIR[:TAG]") from None
    return RegistryStore.open(ref, opts, for_push=for_push)
