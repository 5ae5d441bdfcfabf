"""Serving the CRI image service beside the snapshots API (``[cri_keychain]`` in the config)."""

from __future__ import annotations

import logging

import grpc

from lazypull.cache.chunks import ChunkCache
from lazypull.service.cri.credchain import CredentialChain
from lazypull.service.cri.prefetch import HintPrefetcher
from lazypull.service.cri.proxy import ImageServiceProxy
from lazypull.snapshot.snapshotter import Snapshotter

log = logging.getLogger(__name__)


def add_image_service(
    server: grpc.Server, sn: Snapshotter, image_service_path: str, prefetch_timeout_sec: float
) -> ImageServiceProxy:
    """Register the proxy on *server*; the snapshotter's resolver holds the keychain it fills."""
    assert sn.resolver is not None and sn.remote is not None
    remote = sn.remote
    # The layer server owns the cache directory's one bound: this writer only hands it what it wrote.
    cache = ChunkCache(remote.cache_dir, max_bytes=remote.cache_max_bytes, accounting=False)

    def adopt(digests: list[str]) -> None:
        sn.layers.client.adopt(remote.cache_dir, remote.cache_max_bytes, digests)

    prefetcher = HintPrefetcher(sn.resolver, cache, timeout_sec=max(prefetch_timeout_sec, 1.0), on_written=adopt)
    keychain = sn.resolver.keychain
    if isinstance(keychain, CredentialChain):  # the CRI keychain ahead of the credential providers
        keychain = keychain.keychain
    proxy = ImageServiceProxy(
        image_service_path,
        keychain,  # type: ignore[arg-type]
        prefetcher,
        hint_wait_sec=prefetch_timeout_sec,
        book=sn.book,
    )
    server.add_generic_rpc_handlers((proxy,))
    log.info("serving the CRI image service (keychain, prefetch hints) in front of %s", image_service_path)
    return proxy
