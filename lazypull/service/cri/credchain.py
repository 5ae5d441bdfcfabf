"""The kubelet-side credential sources of the lazy mounts, in the order they are asked.

First what the kubelet sent through ``PullImage`` (the CRI keychain: the pod's own
``imagePullSecrets`` win, as they do for the kubelet), then the node's credential provider
plugins. A source that has none for an image passes on; when none has one, the registry
client uses the node's docker config, or goes anonymous.
"""

from __future__ import annotations

from typing import Protocol

from lazypull.registry.credentials import Credential
from lazypull.registry.reference import Reference
from lazypull.service.cri.keychain import Keychain


class Source(Protocol):
    def get(self, ref: Reference) -> Credential | None: ...

    def source(self, ref: Reference | str) -> str | None: ...


class CredentialChain:
    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources

    @property
    def keychain(self) -> Keychain | None:
        """The CRI keychain among the sources (the image-service proxy fills it)."""
        return next((s for s in self.sources if isinstance(s, Keychain)), None)

    def get(self, ref: Reference) -> Credential | None:
        for s in self.sources:
            cred = s.get(ref)
            if cred is not None:
                return cred
        return None

    def source(self, ref: Reference | str) -> str | None:
        """Where *ref*'s credential comes from, by the first source that has one."""
        for s in self.sources:
            found = s.source(ref)
            if found:
                return found
        return None
