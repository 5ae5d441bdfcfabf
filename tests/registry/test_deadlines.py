"""One deadline per registry read, against a registry that trickles, stalls, resets or
forgets connections (the fault proxy in front of a real docker-registry)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lazypull.errors import RegistryError
from lazypull.oci.types import Descriptor
from lazypull.registry.blobsource import RegistryBlobSource
from lazypull.registry.client import RegistryClient
from lazypull.registry.deadline import claim, current, deadline_scope
from lazypull.registry.hosts import HostsConfig
from lazypull.registry.options import RegistryOptions
from lazypull.registry.reference import Reference
from lazypull.registry.transport import DeadlineExceeded, Transport
from tests.registry.test_client import push_blob
from tests.support.proxy import Proxy, start_proxy, unaccepting_port
from tests.support.registry import Registry

DATA = os.urandom(300_000)
DEADLINE = 2.0
SLACK = 1.0  # the bound: deadline plus a second


@dataclass
class Faulty:
    proxy: Proxy
    ref: Reference
    desc: Descriptor

    def source(self, timeout: float = DEADLINE, retries: int = 5) -> RegistryBlobSource:
        client = RegistryClient(
            RegistryOptions(plain_http=True), transport=Transport(max_retries=retries, total_timeout=timeout)
        )
        return RegistryBlobSource(client, self.ref, self.desc)


@pytest.fixture
def faulty(registry: Registry) -> Iterator[Faulty]:
    proxy = start_proxy(registry.url)
    try:
        client = RegistryClient(RegistryOptions(plain_http=True))
        ref = Reference.parse(f"{proxy.host}/faulty/blob:x")
        yield Faulty(proxy, ref, push_blob(client, ref, DATA))
    finally:
        proxy.stop()


def timed_failure(fn: object) -> tuple[float, str]:
    t0 = time.monotonic()
    with pytest.raises(RegistryError) as ei:
        fn()  # type: ignore[operator]
    return time.monotonic() - t0, str(ei.value)


@pytest.mark.parametrize(
    "mode", [{"trickle_bps": 1024}, {"stall": "accept"}, {"stall": "body"}, {"resets": 10**6}], ids=str
)
def test_faulty_registry_read_ends_within_the_deadline(faulty: Faulty, mode: dict[str, object]) -> None:
    src = faulty.source()
    assert src.read_at(0, 10) == DATA[:10]  # a pooled connection exists: the fault hits it too
    faulty.proxy.faults.match = "/blobs/"
    for k, v in mode.items():
        setattr(faulty.proxy.faults, k, v)
    took, msg = timed_failure(lambda: src.read_at(1000, 200_000))
    assert took < DEADLINE + SLACK, (took, msg)
    assert "faulty/blob" in msg
    faulty.proxy.heal()
    faulty.proxy.faults.resets = 0
    assert src.read_at(1000, 200_000) == DATA[1000:201_000]  # healthy again: reads work


def test_caller_deadline_scope_bounds_a_trickling_read(faulty: Faulty) -> None:
    src = faulty.source(timeout=60)
    faulty.proxy.faults.trickle_bps = 2048
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded), deadline_scope(1.5):
        src.read_at(0, 100_000)
    assert time.monotonic() - t0 < 1.5 + SLACK


def test_retries_never_exceed_the_deadline(faulty: Faulty) -> None:
    # Each attempt times out at the 1 s read timeout; retries must stop at the 2.5 s deadline.
    client = RegistryClient(
        RegistryOptions(plain_http=True),
        hosts=HostsConfig.from_mapping({"host": {faulty.proxy.host: {"request_timeout_sec": 1}}}),
        transport=Transport(max_retries=50, backoff=0.01, total_timeout=2.5),
    )
    src = RegistryBlobSource(client, faulty.ref, faulty.desc)
    faulty.proxy.faults.stall = "accept"
    took, _ = timed_failure(lambda: src.read_at(0, 1000))
    assert took < 2.5 + SLACK


def test_stale_keepalive_connection_is_replaced_at_once(faulty: Faulty) -> None:
    src = faulty.source(timeout=60)
    assert src.read_at(0, 100) == DATA[:100]
    faulty.proxy.faults.stale_after = 1  # every open connection now swallows requests silently
    t0 = time.monotonic()
    assert src.read_at(100, 5000) == DATA[100:5100]
    took = time.monotonic() - t0
    assert took < 2.0 + SLACK, took  # detected within the 2 s stale bound, not a 30 s read timeout


def test_slow_answers_to_uploads_on_reused_connections_are_not_stale(faulty: Faulty) -> None:
    client = RegistryClient(RegistryOptions(plain_http=True))
    ref = Reference.parse(f"{faulty.proxy.host}/faulty/upload:x")
    assert client.blob_exists(ref, faulty.desc.digest) is None  # a keep-alive connection in the pool
    faulty.proxy.faults.match = "/blobs/uploads/"
    faulty.proxy.faults.delay_s = 2.5  # the registry digests the upload before answering
    d = push_blob(client, ref, b"uploaded slowly")
    assert client.blob_exists(ref, d.digest) == len(b"uploaded slowly")


def test_registry_that_never_accepts_fails_within_the_deadline(faulty: Faulty) -> None:
    with unaccepting_port() as host:
        client = RegistryClient(
            RegistryOptions(plain_http=True), transport=Transport(max_retries=5, total_timeout=DEADLINE)
        )
        src = RegistryBlobSource(client, Reference.parse(f"{host}/faulty/blob:x"), faulty.desc)
        took, msg = timed_failure(lambda: src.read_at(0, 100))
        assert took < DEADLINE + SLACK, (took, msg)


def test_scopes_nest_without_extending_and_cut_blocked_reads() -> None:
    with deadline_scope(1.0) as outer:
        with deadline_scope(60.0) as inner:
            assert inner.at == outer.at  # an inner scope never extends the outer deadline
        assert current() is outer
    assert current() is None
    # A socket blocked in recv (no timeout of its own) is shut down when the deadline passes.
    a, b = socket.socketpair()
    try:

        class Conn:
            sock = a

        t0 = time.monotonic()
        with deadline_scope(0.5) as d:
            claim(Conn())
            assert a.recv(10) == b""  # returns at the deadline instead of blocking forever
        assert d.fired and 0.4 < time.monotonic() - t0 < 0.5 + SLACK
    finally:
        a.close()
        b.close()
