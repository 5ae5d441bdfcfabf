"""Mirrors as a node has them: containerd's hosts.toml, a real pull-through cache (the
distribution registry with ``proxy: remoteurl``), dead, slow, lying and range-ignoring
mirrors."""

from __future__ import annotations

import io
import os
import re
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.errors import LazypullError
from lazypull.imagefs import open_image
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.types import Descriptor
from lazypull.registry.blobsource import RegistryBlobSource
from lazypull.registry.client import RegistryClient
from lazypull.registry.deadline import deadline_scope
from lazypull.registry.hosts import HostsConfig
from lazypull.registry.hoststats import HOST_STATS
from lazypull.registry.options import RegistryOptions
from lazypull.registry.reference import Reference
from lazypull.registry.transport import Transport
from tests.imagefs.helpers import build
from tests.support.images import Entry
from tests.support.net import free_port
from tests.support.proxy import Proxy, start_proxy
from tests.support.registry import Registry, start_registry

PLAIN = RegistryOptions(plain_http=True)


@dataclass
class Zone:
    origin: Registry
    cache: Registry  # pull-through cache of origin
    front: Proxy  # in front of the cache: counts what it serves, injects faults

    def hosts_dir(self, root: Path, *mirrors: str) -> Path:
        """containerd's certs.d: the mirrors (default: the cache), then origin."""
        d = root / "certs.d" / self.origin.host
        d.mkdir(parents=True)
        text = f'server = "http://{self.origin.host}"\n'
        for m in mirrors or (self.front.host,):
            text += f'[host."http://{m}"]\ncapabilities = ["pull", "resolve"]\n'
        (d / "hosts.toml").write_text(text)
        return root / "certs.d"


@pytest.fixture
def zone(tmp_path: Path) -> Iterator[Zone]:
    origin = start_registry(tmp_path / "origin")
    cache = start_registry(tmp_path / "cache", proxy_remote=origin.url)
    front = start_proxy(cache.url)
    try:
        yield Zone(origin, cache, front)
    finally:
        front.stop()
        cache.stop()
        origin.stop()


def push(reg: Registry, data: bytes, repo: str = "app/img") -> tuple[Reference, Descriptor]:
    ref = Reference.parse(f"{reg.host}/{repo}:v1")
    d = Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(data), len(data))
    RegistryClient(PLAIN).push_blob(ref, d, io.BytesIO(data))
    return ref, d


def origin_blob_bytes(reg: Registry) -> int:
    """Blob body bytes the origin sent (its access log)."""
    return sum(int(n) for n in re.findall(r'"GET /v2/\S+/blobs/\S+ HTTP/1.1" 20[06] (\d+)', reg.log()))


def test_hosts_toml_cache_serves_the_image(zone: Zone, tmp_path: Path) -> None:
    """A lazy image read through containerd's host directory: tag lookup and ranges go to the
    pull-through cache (with containerd's ns= parameter), bytes come out right."""
    src = build(tmp_path, "estargz", [[Entry("etc/app.conf", data=b"conf " * 1000)], [Entry("bin/tool", data=b"x")]])
    assert main(["copy", "--plain-http", src, f"{zone.origin.host}/app/img:v1"]) == 0
    cfg = tmp_path / "registry.toml"
    cfg.write_text(f'[registry]\nconfig_path = "{zone.hosts_dir(tmp_path)}"\n')
    with open_image(f"{zone.origin.host}/app/img:v1", cache_dir=tmp_path / "c", registry_config=cfg) as img:
        assert img.read_bytes("/etc/app.conf") == b"conf " * 1000
    paths = [p for m, p, _s, _n in zone.front.log if m == "GET"]
    assert any("/manifests/v1?ns=" in p for p in paths)  # resolved through the cache
    assert any("/blobs/" in p and "ns=" in p for p in paths)
    assert HOST_STATS.snapshot()[zone.front.host]["requests"] >= 2


def test_pull_through_cache_and_ranges_of_a_blob_it_has_not_fetched(zone: Zone, tmp_path: Path) -> None:
    """The distribution cache answers a range of a blob it does not hold yet with 200 and the
    whole blob (and fills itself from origin); once filled, with 206. lazypull reads the
    head of such an answer and drops the connection, and takes a range further in from the
    next host, so neither costs more than the range."""
    size = 16 << 20
    data = os.urandom(size)
    ref, d = push(zone.origin, data)
    client = RegistryClient(PLAIN, hosts=HostsConfig(hosts_dir=zone.hosts_dir(tmp_path, zone.cache.host)))
    cache_before = HOST_STATS.snapshot().get(zone.cache.host, {}).get("bytes", 0)
    # the head of an unfetched blob: from the cache's 200, 4 KiB read and the rest left unread
    src = RegistryBlobSource(client, ref, d)
    tracemalloc.start()
    t0 = time.monotonic()
    assert src.read_at(0, 4096) == data[:4096]
    head_s = time.monotonic() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 << 20, peak  # not the 16 MiB blob
    assert HOST_STATS.snapshot()[zone.cache.host]["bytes"] - cache_before == 4096
    # the tail of a second unfetched blob: the cache's 200 is left, origin serves the range
    ref2, d2 = push(zone.origin, os.urandom(size))
    data2 = RegistryClient(PLAIN).read_range(ref2, d2.digest, 0, size)
    src2 = RegistryBlobSource(client, ref2, d2)
    t0 = time.monotonic()
    assert src2.read_at(size - 4096, 4096) == data2[-4096:]
    tail_s = time.monotonic() - t0
    origin_after_tail = origin_blob_bytes(zone.origin)
    # the cache fills itself anyway: soon it answers ranges with 206
    deadline = time.monotonic() + 10
    filled_after = None
    while time.monotonic() < deadline:
        r = client.transport.pool().request(
            "GET",
            f"{zone.cache.url}/v2/app/img/blobs/{d2.digest}",
            headers={"Range": "bytes=0-0"},
            preload_content=False,
        )
        status = r.status
        r.close()
        r.release_conn()
        if status == 206:
            filled_after = time.monotonic() - t0
            break
        time.sleep(0.1)
    assert filled_after is not None
    print(
        f"\npull-through cache, {size >> 20} MiB blobs: head range via cache's 200 {head_s * 1000:.0f} ms,"
        f" client peak {peak >> 10} KiB; tail range (cache 200 -> origin 206) {tail_s * 1000:.0f} ms;"
        f" cache answered 206 {filled_after:.2f} s after the first request; origin sent"
        f" {origin_after_tail / size:.2f} blobs' bytes (cache fills + the push-check read + ranges)"
    )


def test_dead_and_hung_mirrors_fail_over_within_the_deadline_then_are_skipped(zone: Zone, tmp_path: Path) -> None:
    ref, d = push(zone.origin, os.urandom(100_000))
    zone.front.faults.stall = "accept"  # the cache's front takes requests and never answers
    dead = f"127.0.0.1:{free_port()}"
    hosts = HostsConfig(hosts_dir=zone.hosts_dir(tmp_path, dead, zone.front.host))
    client = RegistryClient(PLAIN, hosts=hosts, transport=Transport(max_retries=2, backoff=0.01))
    data = RegistryClient(PLAIN).read_range(ref, d.digest, 0, 100_000)
    src = RegistryBlobSource(client, ref, d)
    t0 = time.monotonic()
    with deadline_scope(4.0):  # the fetch deadline: the hung mirror gets a share, origin the rest
        assert src.read_at(1000, 5000) == data[1000:6000]
    first = time.monotonic() - t0
    assert first < 4.0
    t0 = time.monotonic()
    with deadline_scope(4.0):
        assert src.read_at(50_000, 5000) == data[50_000:55_000]
    assert time.monotonic() - t0 < 1.5  # both mirrors skipped by their breakers (the hung one's share: 2 s)
    zone.front.heal()


def test_every_chunk_is_verified_whichever_host_served_it(zone: Zone, tmp_path: Path) -> None:
    src = build(tmp_path, "estargz", [[Entry("data.bin", data=os.urandom(300_000))]])
    assert main(["copy", "--plain-http", src, f"{zone.origin.host}/app/img:v1"]) == 0
    cfg = tmp_path / "registry.toml"
    cfg.write_text(f'[registry]\nconfig_path = "{zone.hosts_dir(tmp_path)}"\n')
    with open_image(f"{zone.origin.host}/app/img:v1", cache_dir=tmp_path / "c", registry_config=cfg) as img:
        zone.front.faults.corrupt = True  # the mirror flips a byte of every blob body from now on
        with pytest.raises((LazypullError, OSError)):
            img.read_bytes("/data.bin")


def test_a_mirror_ignoring_range_is_read_only_up_to_the_range(zone: Zone, tmp_path: Path) -> None:
    """A mirror answering every range with 200: near the start it is read through to the
    range and dropped; further in the next host is asked, and this blob's later ranges skip
    the mirror for a while."""
    size = 8 << 20
    ref, d = push(zone.origin, os.urandom(size))
    data = RegistryClient(PLAIN).read_range(ref, d.digest, 0, size)
    lying = start_proxy(zone.origin.url)
    lying.faults.ignore_range = True
    try:
        client = RegistryClient(PLAIN, hosts=HostsConfig(hosts_dir=zone.hosts_dir(tmp_path, lying.host)))
        src = RegistryBlobSource(client, ref, d)
        assert src.read_at(100, 1000) == data[100:1100]
        assert src.read_at(6 << 20, 1000) == data[6 << 20 : (6 << 20) + 1000]  # mirror -> origin
        asked = lying.requests
        assert src.read_at(7 << 20, 1000) == data[7 << 20 : (7 << 20) + 1000]
        assert lying.requests == asked  # skipped for this blob
    finally:
        lying.stop()
