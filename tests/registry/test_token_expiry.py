"""Chunk reads outlive the registry token they started with: a token the registry stops
accepting before the client expected (cut short, revoked) is refused with 401, or with
403 by registries and gateways that answer so, and the read gets a fresh token and
succeeds. Real docker-registry in token mode, real token server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lazypull.registry.blobsource import RegistryBlobSource
from lazypull.registry.client import RegistryClient
from lazypull.registry.options import RegistryOptions
from lazypull.registry.reference import Reference
from tests.registry.test_client import push_blob
from tests.support.pki import make_ca, make_cert
from tests.support.proxy import start_proxy
from tests.support.registry import start_registry
from tests.support.tokenserver import start_token_server

LIFETIME = 2  # seconds the registry accepts each token (the client is told 300)


@pytest.mark.parametrize("refusal", [401, 403])
def test_chunk_read_after_the_token_expired(tmp_path: Path, refusal: int) -> None:
    ca = make_ca(tmp_path / "pki")
    signer = make_cert(tmp_path / "pki", ca, "token-signer", server=False)
    ts = start_token_server(signer, {"bob": "hunter2"}, ttl=300)
    ts.lifetime = LIFETIME
    reg = start_registry(tmp_path / "reg", token=ts.registry_config())
    proxy = start_proxy(reg.url)
    proxy.faults.deny_as_403 = refusal == 403
    try:
        client = RegistryClient(RegistryOptions(plain_http=True, user="bob:hunter2"))
        data = bytes(range(256)) * 64
        d = push_blob(client, Reference.parse(f"{reg.host}/tok/app:v1"), data)
        src = RegistryBlobSource(client, Reference.parse(f"{proxy.host}/tok/app:v1"), d)
        assert src.read_at(0, 100) == data[:100]
        issued = len(ts.issued)
        assert src.read_at(100, 100) == data[100:200]
        assert len(ts.issued) == issued  # the token is cached while it is accepted
        time.sleep(LIFETIME + 1)
        assert src.read_at(5000, 1000) == data[5000:6000]  # refused once, then a fresh token
        assert len(ts.issued) == issued + 1
        statuses = [s for m, p, s, _ in proxy.log if "/blobs/" in p and m == "GET"]
        assert statuses[-2:] == [refusal, 206]
    finally:
        proxy.stop()
        reg.stop()
        ts.stop()
