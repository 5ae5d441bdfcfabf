"""``lazypull bench --rtt-ms``: the option reaches the run's settings, and the relay the run
puts in front of the registry adds that round trip to every fetch (a Range GET here)."""

from __future__ import annotations

import io
import time

from lazypull.bench.delayproxy import DelayProxy
from lazypull.cli.bench import bench_config
from lazypull.cli.main import build_parser
from lazypull.oci import digest as digestlib
from lazypull.oci.types import Descriptor
from lazypull.registry.client import RegistryClient
from lazypull.registry.options import RegistryOptions
from lazypull.registry.reference import Reference
from tests.support.registry import Registry

BLOB = b"chunk" * 1000


def _fetch_seconds(client: RegistryClient, ref: Reference, digest: str) -> float:
    t0 = time.monotonic()
    assert client.read_range(ref, digest, 5, 100) == BLOB[5:105]
    return time.monotonic() - t0


def test_rtt_ms_reaches_the_run_and_the_relay_adds_it_to_a_fetch(registry: Registry) -> None:
    args = build_parser("bench").parse_args(["bench", "--images", "python", "--rtt-ms", "120"])
    cfg = bench_config(args)
    assert cfg.rtt_ms == 120.0 and cfg.images == ["python"]
    assert bench_config(build_parser("bench").parse_args(["bench"])).rtt_ms == 0.0

    client = RegistryClient(RegistryOptions(plain_http=True))
    desc = Descriptor("application/octet-stream", digestlib.of_bytes(BLOB), len(BLOB))
    client.push_blob(Reference.parse(f"{registry.host}/rtt:v1"), desc, io.BytesIO(BLOB))

    proxy = DelayProxy("127.0.0.1", ("127.0.0.1", registry.port), cfg.rtt_ms).start()
    try:
        relayed = Reference.parse(f"{proxy.address}/rtt:v1")
        _fetch_seconds(client, relayed, desc.digest)  # the connection is made (and kept) first
        delayed = min(_fetch_seconds(client, relayed, desc.digest) for _ in range(2))
    finally:
        proxy.stop()
    direct = min(_fetch_seconds(client, Reference.parse(f"{registry.host}/rtt:v1"), desc.digest) for _ in range(2))
    assert delayed >= 0.115  # one request there and its answer back: the whole round trip
    assert delayed - direct >= 0.1
