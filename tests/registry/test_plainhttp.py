"""A plain-HTTP registry asked for HTTPS is told from a TLS problem, with the fix that works
(--plain-http, plain_http_hosts), not --insecure; a real TLS failure keeps its own advice."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.errors import RegistryError
from lazypull.registry.client import RegistryClient
from lazypull.registry.options import RegistryOptions
from lazypull.registry.plainhttp import answers_plain_http
from lazypull.registry.reference import Reference
from lazypull.registry.transport import PlainHTTPRegistry, Transport
from tests.support.pki import make_ca, make_cert
from tests.support.registry import Registry, start_registry


@pytest.mark.parametrize("insecure", [False, True], ids=["verify", "insecure"])
def test_plain_http_registry_without_plain_http_says_so(registry: Registry, insecure: bool) -> None:
    client = RegistryClient(RegistryOptions(insecure=insecure), transport=Transport(max_retries=0))
    with pytest.raises(PlainHTTPRegistry) as ei:
        client.get_manifest(Reference.parse(f"{registry.host}/p/x:1"))
    msg = str(ei.value)
    assert ei.value.host == registry.host
    assert "answers plain HTTP" in msg and "--plain-http" in msg and f'plain_http_hosts = ["{registry.host}"]' in msg
    assert "use --insecure" not in msg and "MaxRetryError" not in msg


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[Registry]:
    ca = make_ca(tmp_path / "pki")
    srv = make_cert(tmp_path / "pki", ca, "registry")
    reg = start_registry(tmp_path / "reg", tls=(srv.cert, srv.key))
    try:
        yield reg
    finally:
        reg.stop()


def test_untrusted_tls_registry_keeps_the_ca_advice(tls_registry: Registry) -> None:
    client = RegistryClient(RegistryOptions(), transport=Transport(max_retries=0))
    with pytest.raises(RegistryError) as ei:
        client.get_manifest(Reference.parse(f"{tls_registry.host}/p/x:1"))
    assert not isinstance(ei.value, PlainHTTPRegistry)
    assert "TLS verification failed" in str(ei.value) and "ca = " in str(ei.value)
    assert not answers_plain_http("127.0.0.1", tls_registry.port)


def test_probe_of_a_closed_port_is_no() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        assert not answers_plain_http("127.0.0.1", port, timeout=1)
