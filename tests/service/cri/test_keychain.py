"""The kubelet's credentials from CRI AuthConfig, kept per image repository."""

from __future__ import annotations

import base64

import pytest

from lazypull.service.cri.keychain import CredentialError, Keychain, credential_from_auth
from lazypull.service.cri.proto import api_pb2


def test_auth_forms() -> None:
    c = credential_from_auth(api_pb2.AuthConfig(username="alice", password="pw"))
    assert c is not None and (c.username, c.secret, c.identity_token) == ("alice", "pw", False)
    c = credential_from_auth(api_pb2.AuthConfig(auth=base64.b64encode(b"bob:p:w").decode()))
    assert c is not None and (c.username, c.secret) == ("bob", "p:w")
    c = credential_from_auth(api_pb2.AuthConfig(username="u", identity_token="refresh"))
    assert c is not None and c.identity_token and c.secret == "refresh"
    assert credential_from_auth(api_pb2.AuthConfig()) is None
    assert credential_from_auth(api_pb2.AuthConfig(registry_token="bearer")) is None
    with pytest.raises(CredentialError):
        credential_from_auth(api_pb2.AuthConfig(auth="!!not base64"))
    with pytest.raises(CredentialError) as e:
        credential_from_auth(api_pb2.AuthConfig(auth=base64.b64encode(b"no-colon-secret").decode()))
    assert "no-colon-secret" not in str(e.value)


def test_keyed_by_repository_bounded_and_secret_hidden() -> None:
    kc = Keychain(max_entries=2)
    c = credential_from_auth(api_pb2.AuthConfig(username="alice", password="top-secret"))
    assert c is not None
    kc.add("127.0.0.1:5000/team/app:v1", c)
    assert kc.get("127.0.0.1:5000/team/app:v2") is c
    assert kc.get("127.0.0.1:5000/team/app@sha256:" + "a" * 64) is c
    assert kc.get("127.0.0.1:5000/team/other:v1") is None
    assert kc.get("not a ref!") is None
    kc.add("busybox", c)
    assert kc.get("docker.io/library/busybox:latest") is c
    kc.add("127.0.0.1:5000/x:1", c)
    assert len(kc) == 2 and kc.get("127.0.0.1:5000/team/app:v1") is None  # the oldest went
    assert "top-secret" not in repr(c)


def test_credential_rides_in_the_layer_spec_never_in_its_public_form() -> None:
    """The keychain's credential reaches the layer server inside the LayerSpec (memory only)."""
    from lazypull.fs.spec import LayerSpec
    from lazypull.registry.credentials import Credential
    from lazypull.registry.options import RegistryOptions

    cred = Credential("u", "refresh-token", identity_token=True)
    opts = RegistryOptions(plain_http=True, credential=cred)
    assert RegistryOptions.from_json(opts.to_json()).credential == cred
    spec = LayerSpec(layer={"digest": "sha256:" + "0" * 64}, cache_dir="/c", registry=opts.to_json())
    assert spec.has_secrets
    assert "refresh-token" not in str(spec.public()) and spec.public()["registry"]["plain_http"]
    assert not LayerSpec.from_json(spec.public()).has_secrets
    assert "refresh-token" not in repr(opts)
