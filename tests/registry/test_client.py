"""The registry client against a real docker-registry in each configuration."""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.convert.copy import copy_image
from lazypull.errors import DigestMismatchError, RegistryError
from lazypull.oci import digest as digestlib
from lazypull.oci import mediatypes as mt
from lazypull.oci.layout import OCILayout
from lazypull.oci.store import VerifyingReader
from lazypull.oci.types import Descriptor, Index, Platform
from lazypull.registry.client import RegistryClient
from lazypull.registry.hosts import HostsConfig
from lazypull.registry.options import RegistryOptions
from lazypull.registry.reference import Reference
from lazypull.registry.repository import RegistryStore
from lazypull.registry.transport import Transport
from tests.support.images import Entry, write_image
from tests.support.net import free_port
from tests.support.pki import make_ca, make_cert
from tests.support.proxy import start_proxy
from tests.support.registry import Registry, start_registry
from tests.support.tokenserver import start_token_server

PLAIN = RegistryOptions(plain_http=True)


def push_blob(client: RegistryClient, ref: Reference, data: bytes) -> Descriptor:
    d = Descriptor(mt.OCI_LAYER_GZIP, digestlib.of_bytes(data), len(data))
    client.push_blob(ref, d, io.BytesIO(data))
    return d


def test_multilayer_multiplatform_roundtrip(registry: Registry, tmp_path: Path) -> None:
    root = tmp_path / "src"
    a = write_image(
        root,
        [[Entry("a", data=os.urandom(5000))], [Entry("b", data=b"b")]],
        tag="amd",
        platform=Platform.parse("linux/amd64"),
    )
    b = write_image(root, [[Entry("c", data=b"c")]], tag="arm", platform=Platform.parse("linux/arm64"))
    data = Index([a.manifest_desc, b.manifest_desc]).to_bytes()
    idx = Descriptor(mt.OCI_INDEX, digestlib.of_bytes(data), len(data))
    a.layout.push_manifest(idx, data, tag="multi")
    assert main(["copy", "--plain-http", f"oci:{root}:multi", f"{registry.host}/rt/img:multi"]) == 0
    assert main(["copy", "--plain-http", f"{registry.host}/rt/img:multi", f"oci:{tmp_path / 'back'}:multi"]) == 0
    back = OCILayout(tmp_path / "back", "multi")
    assert back.resolve().digest == idx.digest
    for m in (a, b):
        for layer in m.manifest.layers:
            assert back.fetch(layer, limit=1 << 30) == a.layout.fetch(layer, limit=1 << 30)


def test_range_reads_are_byte_exact_and_coalesced(registry: Registry) -> None:
    client = RegistryClient(PLAIN)
    ref = Reference.parse(f"{registry.host}/rng/blob:x")
    data = os.urandom(300_000)
    d = push_blob(client, ref, data)
    store = RegistryStore(client, ref)
    src = store.blob_source(d)
    for off, n in [(0, 1), (12345, 1000), (299_999, 1), (0, 300_000)]:
        assert src.read_at(off, n) == data[off : off + n]
    before = src.requests
    parts = src.read_ranges([(100, 50), (150, 50), (10, 20), (250_000, 10)])
    assert parts == [data[100:150], data[150:200], data[10:30], data[250_000:250_010]]
    assert src.requests - before == 3  # [10,30) [100,200) merged, then the far range


def test_cross_repo_mount_and_skip_existing(registry: Registry) -> None:
    client = RegistryClient(PLAIN)
    data = os.urandom(10_000)
    d = push_blob(client, Reference.parse(f"{registry.host}/one/a:x"), data)
    client.push_blob(Reference.parse(f"{registry.host}/two/b:x"), d, io.BytesIO(b""), mount_from="one/a")
    assert client.blob_exists(Reference.parse(f"{registry.host}/two/b:x"), d.digest) == len(data)
    assert "mount=" in registry.log()
    # pushing again is a HEAD only
    client.push_blob(Reference.parse(f"{registry.host}/two/b:x"), d, io.BytesIO(b"never read"))


def test_chunked_upload(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    import lazypull.registry.client as c

    monkeypatch.setattr(c, "CHUNKED_UPLOAD_THRESHOLD", 1000)
    monkeypatch.setattr(c, "UPLOAD_CHUNK", 4096)
    client = RegistryClient(PLAIN)
    ref = Reference.parse(f"{registry.host}/chunked/x:y")
    data = os.urandom(20_000)
    d = push_blob(client, ref, data)
    assert client.read_range(ref, d.digest, 0, len(data)) == data
    assert "PATCH" in registry.log()


def test_tampered_blob_is_detected(registry: Registry, tmp_path: Path) -> None:
    client = RegistryClient(PLAIN)
    ref = Reference.parse(f"{registry.host}/tamper/x:y")
    data = b"precious bytes" * 100
    d = push_blob(client, ref, data)
    registry.blob_data_path(d.digest).write_bytes(b"X" * len(data))
    store = RegistryStore(client, ref)
    with pytest.raises(DigestMismatchError):
        store.fetch(d)
    with pytest.raises(DigestMismatchError):
        VerifyingReader(store.open_blob(d), d).read()


def test_manifest_digest_verified(registry: Registry, tmp_path: Path) -> None:
    built = write_image(tmp_path / "src", [[Entry("a", data=b"a")]])
    assert main(["copy", "--plain-http", f"oci:{tmp_path / 'src'}:latest", f"{registry.host}/m/x:v"]) == 0
    client = RegistryClient(PLAIN)
    ref = Reference.parse(f"{registry.host}/m/x@{built.manifest_desc.digest}")
    _data, media_type, dg = client.get_manifest(ref)
    assert dg == built.manifest_desc.digest and media_type == mt.OCI_MANIFEST
    blob = registry.blob_data_path(dg)
    blob.write_bytes(blob.read_bytes().replace(b"schemaVersion", b"schemaversion"))
    with pytest.raises((DigestMismatchError, RegistryError)):
        client.get_manifest(ref)


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[tuple[Registry, Path]]:
    ca = make_ca(tmp_path / "pki")
    srv = make_cert(tmp_path / "pki", ca, "registry")
    reg = start_registry(tmp_path / "reg", tls=(srv.cert, srv.key))
    try:
        yield reg, ca.cert
    finally:
        reg.stop()


def test_tls_with_custom_ca(tls_registry: tuple[Registry, Path], tmp_path: Path) -> None:
    reg, ca = tls_registry
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(f'[resolver.host."{reg.host}"]\nca = "{ca}"\n')
    ref = Reference.parse(f"{reg.host}/tls/x:y")
    client = RegistryClient(RegistryOptions(registry_config=hosts))
    d = push_blob(client, ref, b"over tls")
    assert client.read_range(ref, d.digest, 5, 3) == b"tls"
    with pytest.raises(RegistryError):  # no CA: verification fails, clearly
        RegistryClient(RegistryOptions(), transport=Transport(max_retries=0)).blob_exists(ref, d.digest)
    assert RegistryClient(RegistryOptions(insecure=True)).blob_exists(ref, d.digest) == 8


@pytest.fixture
def htpasswd_registry(tmp_path: Path) -> Iterator[Registry]:
    reg = start_registry(tmp_path / "reg", users={"alice": "s3cret-pw"})
    try:
        yield reg
    finally:
        reg.stop()


def test_basic_auth_and_no_secret_in_logs(
    htpasswd_registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ref = Reference.parse(f"{htpasswd_registry.host}/auth/x:y")
    with pytest.raises(RegistryError, match="credentials") as ei:
        push_blob(RegistryClient(PLAIN), ref, b"data")
    client = RegistryClient(RegistryOptions(plain_http=True, user="alice:s3cret-pw"))
    d = push_blob(client, ref, b"data")
    assert client.read_range(ref, d.digest, 0, 4) == b"data"
    with pytest.raises(RegistryError) as bad:
        push_blob(RegistryClient(RegistryOptions(plain_http=True, user="alice:wrong")), ref, b"other")
    assert "s3cret" not in caplog.text and "s3cret" not in str(ei.value) and "wrong" not in str(bad.value)
    assert "s3cret" not in repr(client.opts) and "s3cret" not in repr(client._host(ref).auth.credential)
    # docker config.json credentials
    cfg = tmp_path / "config.json"
    import base64
    import json

    cfg.write_text(
        json.dumps({"auths": {htpasswd_registry.host: {"auth": base64.b64encode(b"alice:s3cret-pw").decode()}}})
    )
    dc = RegistryClient(RegistryOptions(plain_http=True, docker_config=cfg))
    assert dc.blob_exists(ref, d.digest) == 4


def test_credential_helper(htpasswd_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-lazytest"
    helper.write_text('#!/bin/sh\nread host\necho \'{"Username": "alice", "Secret": "s3cret-pw"}\'\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"credHelpers": {htpasswd_registry.host: "lazytest"}}))
    client = RegistryClient(RegistryOptions(plain_http=True, docker_config=cfg))
    ref = Reference.parse(f"{htpasswd_registry.host}/helper/x:y")
    d = push_blob(client, ref, b"via helper")
    assert client.blob_exists(ref, d.digest) == 10


def test_token_auth_scopes_and_refresh(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki")
    signer = make_cert(tmp_path / "pki", ca, "token-signer", server=False)
    ts = start_token_server(signer, {"bob": "hunter2"}, ttl=2)
    reg = start_registry(tmp_path / "reg", token=ts.registry_config())
    try:
        ref = Reference.parse(f"{reg.host}/tok/app:v1")
        anon = RegistryClient(PLAIN)
        with pytest.raises(RegistryError):
            push_blob(anon, ref, b"nope")
        client = RegistryClient(RegistryOptions(plain_http=True, user="bob:hunter2"))
        d = push_blob(client, ref, b"token data")
        assert any(s.endswith(":pull,push") for s in ts.issued)
        n = len(ts.issued)
        assert client.read_range(ref, d.digest, 0, 5) == b"token"
        assert client.read_range(ref, d.digest, 6, 4) == b"data"
        assert len(ts.issued) == n  # the pull token (from the push's HEAD) is cached
        time.sleep(2.5)  # tokens expired: the client refreshes transparently
        assert client.read_range(ref, d.digest, 0, 5) == b"token"
        assert len(ts.issued) >= n + 1
    finally:
        reg.stop()
        ts.stop()


def test_mirror_fallback_when_mirror_is_down(registry: Registry, tmp_path: Path) -> None:
    dead = free_port()
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(f'[[resolver.host."{registry.host}".mirrors]]\nhost = "127.0.0.1:{dead}"\ninsecure = true\n')
    client = RegistryClient(
        RegistryOptions(plain_http=True, registry_config=hosts), transport=Transport(max_retries=1, backoff=0.01)
    )
    ref = Reference.parse(f"{registry.host}/mirror/x:y")
    d = push_blob(client, ref, b"upstream data")
    assert client.read_range(ref, d.digest, 0, 8) == b"upstream"


def test_mirror_is_used_first(registry: Registry, tmp_path: Path) -> None:
    proxy = start_proxy(registry.url)
    try:
        hosts = tmp_path / "hosts.toml"
        hosts.write_text(f'[[resolver.host."docker.io".mirrors]]\nhost = "{proxy.host}"\ninsecure = true\n')
        client = RegistryClient(RegistryOptions(registry_config=hosts))
        upstream = RegistryClient(PLAIN)
        d = push_blob(upstream, Reference.parse(f"{registry.host}/library/busybox:x"), b"mirrored")
        assert client.read_range(Reference.parse("busybox"), d.digest, 0, 8) == b"mirrored"
        assert proxy.requests >= 1
    finally:
        proxy.stop()


def test_retries_through_faults_with_bounded_time(registry: Registry) -> None:
    proxy = start_proxy(registry.url)
    try:
        client = RegistryClient(RegistryOptions(plain_http=True), transport=Transport(max_retries=5, backoff=0.01))
        ref = Reference.parse(f"{proxy.host}/faulty/x:y")
        data = os.urandom(50_000)
        d = push_blob(client, ref, data)
        for fault in ("resets", "errors_500", "truncate"):
            proxy.faults.match = "/blobs/sha256"
            setattr(proxy.faults, fault, 2)
            t0 = time.monotonic()
            assert client.read_range(ref, d.digest, 100, 20_000) == data[100:20_100], fault
            assert time.monotonic() - t0 < 10
        proxy.faults.errors_500 = 100
        t0 = time.monotonic()
        with pytest.raises(RegistryError, match="after"):
            client.read_range(ref, d.digest, 0, 10)
        assert time.monotonic() - t0 < 10
        proxy.faults.errors_500 = 0
        # slow responses beyond the read timeout count as failures and are retried
        slow = RegistryClient(
            RegistryOptions(plain_http=True),
            hosts=HostsConfig.from_mapping({"host": {proxy.host: {"request_timeout_sec": 0.3}}}),
            transport=Transport(max_retries=1, backoff=0.01, total_timeout=5),
        )
        proxy.faults.delay_s = 1.0
        t0 = time.monotonic()
        with pytest.raises(RegistryError):
            slow.read_range(ref, d.digest, 0, 10)
        assert time.monotonic() - t0 < 6
    finally:
        proxy.faults.delay_s = 0
        proxy.stop()


def test_copy_between_repos_mounts(registry: Registry, tmp_path: Path) -> None:
    write_image(tmp_path / "src", [[Entry("a", data=os.urandom(2000))]])
    opts = RegistryOptions(plain_http=True)
    src = RegistryStore.open(f"{registry.host}/c1/img:v1", opts)
    copy_image(OCILayout(tmp_path / "src", "latest"), RegistryStore.open(f"{registry.host}/c1/img:v1", opts), tag="v1")
    copy_image(src, RegistryStore.open(f"{registry.host}/c2/img:v1", opts), tag="v1")
    assert "mount=" in registry.log()
    assert RegistryStore.open(f"{registry.host}/c2/img:v1", opts).resolve().digest == src.resolve().digest


def test_redirects_to_blob_storage_are_followed_and_re_resolved_when_expired(registry: Registry) -> None:
    proxy = start_proxy(registry.url)
    try:
        client = RegistryClient(PLAIN)
        ref = Reference.parse(f"{proxy.host}/redir/x:y")
        data = os.urandom(100_000)
        d = push_blob(client, ref, data)
        proxy.faults.redirect_blobs = True
        src = RegistryStore(client, ref).blob_source(d)
        assert src.read_at(10, 100) == data[10:110]
        assert src.read_at(5000, 10) == data[5000:5010]
        redirects = [e for e in proxy.log if e[2] == 307]
        assert len(redirects) == 1  # the storage URL was remembered for the second range
        proxy.faults.storage_generation += 1  # signed URLs expired
        assert src.read_at(200, 50) == data[200:250]
        assert len([e for e in proxy.log if e[2] == 307]) == 2  # asked the registry again
        with RegistryStore(client, ref).open_blob(d) as f:  # whole-blob GETs follow redirects too
            assert f.read() == data
    finally:
        proxy.stop()
