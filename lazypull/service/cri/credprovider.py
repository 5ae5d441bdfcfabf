"""Registry credentials from the kubelet's exec credential provider plugins.

When a lazy mount needs credentials for an image the kubelet never sent through
``PullImage`` (pulled by another client, mounted ahead, mounted again after a restart
without a keyring), the daemon asks the node's credential provider plugins, as the
kubelet does: each provider whose ``matchImages`` match is run with a
``CredentialProviderRequest`` on stdin, and its ``CredentialProviderResponse`` on stdout
names credentials per image pattern. The answer is cached for its ``cacheDuration``
(else the provider's ``defaultCacheDuration``) under the image, its registry or for all
images (``cacheKeyType``); once that expires the plugin runs again, so rotated
credentials are picked up. A plugin that fails, hangs (killed after the timeout) or
answers nonsense yields no credential, remembered only for a few seconds.

Credentials live in this process's memory only: never logged (not even the plugin's
stdout), never written anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lazypull.errors import LazypullError
from lazypull.registry.credentials import Credential
from lazypull.registry.reference import Reference
from lazypull.service.cri.credproviderconfig import ProviderConfig, load_config, parse_duration
from lazypull.service.cri.imagematch import best_key, matches

log = logging.getLogger(__name__)

TIMEOUT = 10.0  # seconds a plugin may take; a lazy mount (and containerd's Prepare) waits for it
FAILURE_TTL = 5.0  # seconds a failed run is remembered, so concurrent layer mounts do not each run it
MAX_OUTPUT = 1 << 20  # bytes of a response; more is not a credential
MAX_ENTRIES = 4096  # cached answers per provider
CACHE_KEY_TYPES = ("Image", "Registry", "Global")


class ProviderError(LazypullError):
    """A plugin run gave no usable answer (the message never carries its stdout)."""


class RecentlyFailed(ProviderError):
    """The plugin failed moments ago; it is not run again yet (the failure was logged then)."""


def request_image(ref: Reference) -> str:
    """What the kubelet sends as ``image``: the repository, fully qualified, no tag or digest."""
    return f"{ref.registry}/{ref.repository}"


@dataclass(frozen=True)
class Response:
    cache_key_type: str
    cache_sec: float | None  # None: the provider's default
    auth: dict[str, Credential] = field(repr=False)


def parse_response(stdout: bytes, api_version: str) -> Response:
    """The plugin's answer, checked as the kubelet checks it."""
    if len(stdout) > MAX_OUTPUT:
        raise ProviderError(f"response larger than {MAX_OUTPUT} bytes")
    try:
        d = json.loads(stdout)
    except ValueError:
        raise ProviderError("response is not JSON") from None
    if not isinstance(d, dict):
        raise ProviderError("response is not a JSON object")
    if d.get("kind") != "CredentialProviderResponse":
        raise ProviderError(f"response kind is {str(d.get('kind'))[:80]!r}, not 'CredentialProviderResponse'")
    if d.get("apiVersion") != api_version:
        raise ProviderError(f"response apiVersion is {str(d.get('apiVersion'))[:80]!r}, not {api_version!r}")
    key_type = d.get("cacheKeyType")
    if key_type not in CACHE_KEY_TYPES:
        raise ProviderError(f"cacheKeyType is {str(key_type)[:80]!r}, not one of {', '.join(CACHE_KEY_TYPES)}")
    cache_sec = None
    if d.get("cacheDuration") is not None:
        try:
            cache_sec = parse_duration(d["cacheDuration"])
        except ValueError as e:
            raise ProviderError(f"cacheDuration: {e}") from None
    auth: dict[str, Credential] = {}
    raw = d.get("auth") or {}
    if not isinstance(raw, dict):
        raise ProviderError("auth is not an object")
    for pattern, entry in raw.items():
        if not isinstance(entry, dict):
            raise ProviderError(f"auth entry for {pattern[:200]!r} is not an object")
        user, password = entry.get("username", ""), entry.get("password", "")
        if not isinstance(user, str) or not isinstance(password, str):
            raise ProviderError(f"auth entry for {pattern[:200]!r}: username and password must be strings")
        auth[pattern] = Credential(user, password)
    return Response(key_type, cache_sec, auth)


def _stderr_text(err: bytes) -> str:
    """The plugin's complaint, short: its last non-empty line, at most 200 characters."""
    lines = [x.strip() for x in err.decode(errors="replace").splitlines() if x.strip()]
    return f": {lines[-1][:200]}" if lines else ""


def run_plugin(p: ProviderConfig, image: str, timeout: float = TIMEOUT) -> Response:
    """Run provider *p* for *image*; killed (its whole process group) after *timeout* seconds."""
    req = json.dumps({"apiVersion": p.api_version, "kind": "CredentialProviderRequest", "image": image}).encode()
    env = {**os.environ, **dict(p.env)}
    try:
        proc = subprocess.Popen(
            [str(p.executable), *p.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a process group of its own: a timeout kills its children too
            close_fds=True,
        )
    except OSError as e:
        raise ProviderError(f"cannot run {p.executable}: {e.strerror or e}") from None
    try:
        out, err = proc.communicate(req, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise ProviderError(f"timed out after {timeout:g}s (killed)") from None
    except BaseException:
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        why = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        raise ProviderError(f"{why}{_stderr_text(err)}")
    return parse_response(out, p.api_version)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # a descendant that left the group holds the pipes open
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                f.close()
        proc.wait()


@dataclass
class _Entry:
    until: float  # monotonic
    auth: dict[str, Credential] = field(repr=False)


class Provider:
    """One configured plugin: runs it for an image and caches its answers (thread-safe)."""

    def __init__(
        self,
        cfg: ProviderConfig,
        timeout: float = TIMEOUT,
        failure_ttl: float = FAILURE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.timeout = timeout
        self.failure_ttl = failure_ttl
        self.clock = clock
        self.runs = 0  # plugin runs, for the tests and the log
        self._cache: dict[str, _Entry] = {}  # "image:..", "registry:..", "global"
        self._failed: dict[str, float] = {}  # image -> until
        self._inflight: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.cfg.name

    def handles(self, image: str) -> bool:
        return any(matches(pattern, image) for pattern in self.cfg.match_images)

    def _cached(self, image: str) -> dict[str, Credential] | None:
        now = self.clock()
        for key in (f"image:{image}", f"registry:{image.split('/', 1)[0]}", "global"):
            e = self._cache.get(key)
            if e is not None:
                if e.until > now:
                    return e.auth
                del self._cache[key]
        return None

    def cached_auth(self, image: str) -> dict[str, Credential] | None:
        """The cached answer for *image*, if one is current (never runs the plugin)."""
        with self._lock:
            return self._cached(image)

    def auth_for(self, image: str) -> dict[str, Credential]:
        """The plugin's ``auth`` for *image*: from the cache, else from a run (one at a time
        per image: concurrent callers wait for it). Raises ProviderError when it failed."""
        while True:
            with self._lock:
                auth = self._cached(image)
                if auth is not None:
                    return auth
                failed = self._failed.get(image)
                if failed is not None and failed > self.clock():
                    raise RecentlyFailed("failed moments ago (not run again yet)")
                ev = self._inflight.get(image)
                if ev is None:
                    ev = self._inflight[image] = threading.Event()
                    break
            ev.wait()
        try:
            return self._run(image)
        finally:
            with self._lock:
                del self._inflight[image]
            ev.set()

    def _run(self, image: str) -> dict[str, Credential]:
        t0 = time.monotonic()
        with self._lock:
            self.runs += 1
        try:
            resp = run_plugin(self.cfg, image, self.timeout)
        except ProviderError:
            with self._lock:
                self._failed[image] = self.clock() + self.failure_ttl
                if len(self._failed) > MAX_ENTRIES:
                    now = self.clock()
                    self._failed = {k: v for k, v in self._failed.items() if v > now}
            raise
        ttl = resp.cache_sec if resp.cache_sec is not None else self.cfg.default_cache_sec
        key = {"Image": f"image:{image}", "Registry": f"registry:{image.split('/', 1)[0]}", "Global": "global"}[
            resp.cache_key_type
        ]
        with self._lock:
            self._failed.pop(image, None)
            if ttl > 0:  # 0: not cached, the plugin runs at every lookup
                if len(self._cache) >= MAX_ENTRIES:
                    now = self.clock()
                    self._cache = {k: v for k, v in self._cache.items() if v.until > now}
                    while len(self._cache) >= MAX_ENTRIES:
                        del self._cache[next(iter(self._cache))]
                self._cache[key] = _Entry(self.clock() + ttl, resp.auth)
        log.info(
            "credential provider %s: answered for %s in %.2fs (%d auth entries, cached %s for %gs)",
            self.name,
            image,
            time.monotonic() - t0,
            len(resp.auth),
            resp.cache_key_type.lower(),
            ttl,
        )
        return resp.auth


class CredentialProviders:
    """The node's credential provider plugins as a credential source (``get(ref)``).

    Providers are asked in the config's order; the first whose answer has an ``auth`` key
    matching the image gives the credential (its most specific matching key, as the kubelet
    orders them). Errors are logged (never a secret) and yield None: the registry client
    goes on with the node's docker config, or anonymously."""

    def __init__(self, providers: list[Provider]) -> None:
        self.providers = providers

    @classmethod
    def load(cls, config: Path, bin_dir: Path, timeout: float = TIMEOUT) -> CredentialProviders:
        provs = [Provider(c, timeout) for c in load_config(config, bin_dir)]
        log.info("kubelet credential providers from %s: %s", config, ", ".join(p.name for p in provs) or "(none)")
        return cls(provs)

    def get(self, ref: Reference | str) -> Credential | None:
        try:
            r = Reference.parse(ref) if isinstance(ref, str) else ref
        except LazypullError:
            return None
        image = request_image(r)
        for p in self.providers:
            if not p.handles(image):
                continue
            try:
                auth = p.auth_for(image)
            except RecentlyFailed as e:
                log.debug("credential provider %s for %s: %s", p.name, image, e)
                continue
            except ProviderError as e:
                log.warning("credential provider %s for %s: %s", p.name, image, e)
                continue
            key = best_key(list(auth), image)
            if key is not None:
                cred = auth[key]
                return cred if cred.username or cred.secret else None
        return None

    def source(self, ref: Reference | str) -> str | None:
        """``provider:NAME`` of the provider whose cached answer covers *ref* (for ``lazypull
        status``; never runs a plugin)."""
        try:
            image = request_image(Reference.parse(ref) if isinstance(ref, str) else ref)
        except LazypullError:
            return None
        for p in self.providers:
            if not p.handles(image):
                continue
            auth = p.cached_auth(image)
            if auth and best_key(list(auth), image) is not None:
                return f"provider:{p.name}"
        return None
