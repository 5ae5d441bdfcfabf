"""Polite to registries: Retry-After, a per-host request limit, one token request per scope."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor
from lazypull.registry.client import RegistryClient
from lazypull.registry.deadline import deadline_scope
from lazypull.registry.hosts import HostsConfig
from lazypull.registry.hoststats import HOST_STATS
from lazypull.registry.options import RegistryOptions
from lazypull.registry.reference import Reference
from lazypull.registry.transport import Throttled, Transport, retry_after_seconds
from tests.support.pki import make_ca, make_cert
from tests.support.proxy import start_proxy
from tests.support.registry import Registry, start_registry
from tests.support.tokenserver import start_token_server

PLAIN = RegistryOptions(plain_http=True)


def push(client: RegistryClient, ref: Reference, data: bytes) -> Descriptor:
    d = Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(data), len(data))
    client.push_blob(ref, d, io.BytesIO(data))
    return d


def test_retry_after_forms() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 20))
    assert 18 <= (retry_after_seconds(when) or 0) <= 21


def test_429_waits_as_asked_or_fails_over_at_once(registry: Registry, tmp_path: Path) -> None:
    proxy = start_proxy(registry.url)
    try:
        ref = Reference.parse(f"{proxy.host}/polite/x:y")
        data = os.urandom(10_000)
        d = push(RegistryClient(PLAIN), ref, data)
        client = RegistryClient(PLAIN, transport=Transport(max_retries=3, backoff=0.01))
        proxy.faults.match, proxy.faults.throttle, proxy.faults.retry_after = "/blobs/", 1, "1"
        before = HOST_STATS.snapshot().get(proxy.host, {}).get("throttles", 0)
        t0 = time.monotonic()
        assert client.read_range(ref, d.digest, 0, 100) == data[:100]
        assert 0.9 <= time.monotonic() - t0 < 3  # waited the second it asked for, not the 10 ms backoff
        assert HOST_STATS.snapshot()[proxy.host]["throttles"] == before + 1
        # asked to wait past the deadline: no sleeping into it
        proxy.faults.throttle, proxy.faults.retry_after = 1, "30"
        t0 = time.monotonic()
        with deadline_scope(3.0), pytest.raises(Throttled):
            client.read_range(ref, d.digest, 0, 100)
        assert time.monotonic() - t0 < 2  # not the 30 s, nor the 3 s deadline
        # a throttling mirror: the next host at once, and the mirror left alone as asked
        mirror = start_proxy(registry.url)
        try:
            mirror.faults.match, mirror.faults.throttle, mirror.faults.retry_after = "/blobs/", 1, "30"
            hosts = HostsConfig.from_mapping(
                {"host": {proxy.host: {"mirrors": [{"host": mirror.host, "insecure": True}]}}}
            )
            via = RegistryClient(PLAIN, hosts=hosts, transport=Transport(max_retries=3, backoff=0.01))
            t0 = time.monotonic()
            with deadline_scope(3.0):
                assert via.read_range(ref, d.digest, 10, 100) == data[10:110]
                assert via.read_range(ref, d.digest, 20, 100) == data[20:120]
            assert time.monotonic() - t0 < 2
            assert mirror.requests == 0 and len(mirror.log) == 1  # one 429, then skipped
        finally:
            mirror.stop()
    finally:
        proxy.stop()


def test_requests_per_host_are_limited_across_clients(registry: Registry) -> None:
    proxy = start_proxy(registry.url)
    try:
        ref = Reference.parse(f"{proxy.host}/limit/x:y")
        data = os.urandom(10_000)
        d = push(RegistryClient(PLAIN), ref, data)
        proxy.faults.match, proxy.faults.delay_s = "/blobs/", 0.3
        hosts = HostsConfig(max_requests_per_host=2)
        clients = [RegistryClient(PLAIN, hosts=hosts) for _ in range(2)]  # e.g. two credentials' clients
        errors: list[BaseException] = []

        def read(i: int) -> None:
            try:
                assert clients[i % 2].read_range(ref, d.digest, i, 10) == data[i : i + 10]
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=read, args=(i,)) for i in range(6)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert time.monotonic() - t0 >= 0.85  # 6 requests of 0.3 s, 2 at a time: 3 rounds
    finally:
        proxy.stop()


def test_one_token_request_per_scope_for_many_readers(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki")
    signer = make_cert(tmp_path / "pki", ca, "token-signer", server=False)
    ts = start_token_server(signer, {"bob": "hunter2"}, ttl=300)
    reg = start_registry(tmp_path / "reg", token=ts.registry_config())
    try:
        opts = RegistryOptions(plain_http=True, user="bob:hunter2")
        ref = Reference.parse(f"{reg.host}/tok/app:v1")
        data = os.urandom(5000)
        d = push(RegistryClient(opts), ref, data)
        client = RegistryClient(opts)
        client.read_range(ref, d.digest, 0, 1)  # learns the challenge
        client._host(ref).auth._tokens.clear()  # the token expired: every reader needs a new one
        issued = len(ts.issued)
        barrier = threading.Barrier(8)
        out: list[bytes] = []

        def read(i: int) -> None:
            barrier.wait()
            out.append(client.read_range(ref, d.digest, i, 10))

        threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(out) == sorted(data[i : i + 10] for i in range(8))
        assert len(ts.issued) - issued == 1
    finally:
        reg.stop()
        ts.stop()
