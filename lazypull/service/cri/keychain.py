"""The kubelet's registry credentials, kept per image for the lazy mounts of its layers.

Pods pull private images with ``imagePullSecrets``; the kubelet hands those credentials
only to the CRI ``PullImage`` call. The image-service proxy records them here, in memory
and in the kernel keyring (never logged, never written to disk: see :mod:`.keyring`),
under the image's repository. The snapshotter asks for them when it mounts that image's
layers, also after the daemon or the layer server restarted: a new keychain takes back
what the keyring holds. Username/password and identity tokens are kept as they are, so
the registry client's bearer-token refresh works for as long as the layers are mounted.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
import weakref
from collections import OrderedDict

from lazypull.errors import LazypullError
from lazypull.registry.credentials import Credential
from lazypull.registry.reference import Reference
from lazypull.service.cri import keyring as keyring_mod
from lazypull.service.cri.keyring import KernelKeyring
from lazypull.service.cri.proto import api_pb2

log = logging.getLogger(__name__)

MAX_ENTRIES = 4096  # images; the oldest are forgotten first


class CredentialError(LazypullError):
    """A CRI AuthConfig cannot be turned into credentials."""


def credential_from_auth(auth: api_pb2.AuthConfig) -> Credential | None:
    """The credential in a CRI ``AuthConfig`` (None when it carries none)."""
    if auth.identity_token:
        return Credential(auth.username, auth.identity_token, identity_token=True)
    if auth.registry_token and not (auth.username or auth.password or auth.auth):
        # A bare bearer token has no scope or expiry we could refresh; the lazy mount
        # falls back to the node's own credentials (docker config), or a normal pull.
        log.info("PullImage carries a registry token only; lazy mounts use the node's credentials")
        return None
    user, password = auth.username, auth.password
    if auth.auth and not (user or password):
        try:
            decoded = base64.b64decode(auth.auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialError("PullImage auth field is not base64 of NAME:PASSWORD") from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise CredentialError("PullImage auth field is not base64 of NAME:PASSWORD")
    if not user and not password:
        return None
    return Credential(user, password)


def image_key(ref: Reference | str) -> str:
    """Credentials are per repository: every tag and digest of an image shares them."""
    r = Reference.parse(ref) if isinstance(ref, str) else ref
    return f"{r.registry}/{r.repository}"


_DEFAULT = object()


class Keychain:
    """Image repository -> the credential of its latest PullImage (bounded, thread-safe).

    Written through to *keyring* (by default the kernel keyring, when this process can use
    it) and filled from it when made, so credentials outlive a daemon restart."""

    def __init__(self, max_entries: int = MAX_ENTRIES, keyring: KernelKeyring | object | None = _DEFAULT) -> None:
        self.max_entries = max_entries
        self._d: OrderedDict[str, Credential] = OrderedDict()
        self._sources: dict[str, str] = {}  # key -> where its credential came from (never the secret)
        self._lock = threading.Lock()
        self._writes = threading.Lock()  # the keyring is written in the order memory is
        self.keyring: KernelKeyring | None = (
            keyring_mod.open_keyring() if keyring is _DEFAULT else keyring  # type: ignore[assignment]
        )
        self._restore()
        if self.keyring is not None and self.keyring.ttl > 0:
            _start_renewal(self, max(self.keyring.ttl / 4, 0.5))

    def renew(self) -> None:
        """Start the timeouts of the credentials this keychain holds again: a key lasts as
        long as the daemon keeps its credential, and its timeout after the daemon stopped;
        a key gone from the keyring (timed out, cleared by hand) is written anew."""
        kr = self.keyring
        if kr is None:
            return
        with self._writes:
            with self._lock:
                entries = list(self._d.items())
            try:
                for key, cred in entries:
                    if not kr.touch(key):
                        kr.put(key, cred)
            except OSError as e:
                self._keyring_failed(e)

    def _restore(self) -> None:
        kr = self.keyring
        if kr is None:
            return
        try:
            items = kr.items()
        except OSError as e:
            self._keyring_failed(e)
            return
        items = items[-self.max_entries :]
        with self._lock:
            for key, cred in items:
                self._d[key] = cred
                self._sources[key] = "keyring-restored"
        for key, _ in items:
            log.info("keychain: credentials for %s restored from the kernel keyring", key)

    def _keyring_failed(self, e: OSError) -> None:
        if self.keyring is None:
            return
        self.keyring = None
        log.warning(
            "keychain: the kernel keyring failed (%s); credentials are kept in memory only from now on",
            e.strerror or e,
        )

    def add(self, ref: Reference | str, credential: Credential, source: str = "cri") -> None:
        """Keep *credential* for *ref*'s repository; *source* says where it came from
        ("cri": a kubelet's ``PullImage``), shown by ``lazypull status``."""
        key = image_key(ref)
        with self._writes:
            with self._lock:
                self._d.pop(key, None)
                self._d[key] = credential
                self._sources[key] = source
                evicted: list[str] = []
                while len(self._d) > self.max_entries:
                    evicted.append(self._d.popitem(last=False)[0])
                    self._sources.pop(evicted[-1], None)
            kr = self.keyring
            if kr is not None:
                try:
                    kr.put(key, credential)
                    for old in evicted:
                        kr.remove(old)
                except OSError as e:
                    self._keyring_failed(e)
        log.debug("keychain: credentials for %s recorded", key)

    def get(self, ref: Reference | str) -> Credential | None:
        try:
            key = image_key(ref)
        except LazypullError:
            return None
        with self._lock:
            cred = self._d.get(key)
            if cred is not None:
                self._d.move_to_end(key)
            return cred

    def source(self, ref: Reference | str) -> str | None:
        """Where the credential kept for *ref* came from, or None if none is kept."""
        try:
            key = image_key(ref)
        except LazypullError:
            return None
        with self._lock:
            return self._sources.get(key) if key in self._d else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._d)


def _start_renewal(keychain: Keychain, interval: float) -> None:
    """Renew *keychain*'s keys every *interval* seconds, until it is gone or has no keyring."""
    ref = weakref.ref(keychain)

    def run() -> None:
        while True:
            time.sleep(interval)
            kc = ref()
            if kc is None or kc.keyring is None:
                return
            kc.renew()
            del kc

    threading.Thread(target=run, name="keychain-renew", daemon=True).start()
