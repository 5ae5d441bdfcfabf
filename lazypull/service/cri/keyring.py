"""The kubelet's credentials kept across restarts in the kernel keyring, never on disk.

Why the keyring: the credentials a ``PullImage`` carried are needed again whenever a layer
is mounted anew (the layer server restarted, or both it and the daemon did), and the
kubelet does not send them again for an image it already has. Writing them to a file,
even 0600, puts them on disk (backups, snapshots of the root volume); keeping them in
the daemon's memory loses them on its restart. The kernel keyring holds them in kernel
memory, outlives the daemon and the layer server, never reaches swap or disk, and is
gone on reboot (when the node pulls again anyway). Each key times out (``TTL`` after the
daemon last renewed it), and its permissions allow only its possessor and its owner's uid
(root here): no group, no others. Root processes of the host's user namespace can read it,
as they can read the daemon's memory; containers are kept out by the runtime's default
seccomp profile (it denies ``add_key``/``keyctl``) or a user namespace of their own. The
threat model is in ``docs/credentials.md``.

Layout: a keyring named ``lazypull:keychain`` (or ``$LAZYPULL_KEYRING``) linked into the
daemon user's keyring (``@u``), holding one ``user`` key per image repository, described
``lazypull:cred:<registry>/<repository>``, whose payload is the credential as JSON.

Plain ``syscall(2)`` through ctypes: no library to install on the node. Where the keyring
cannot be used (no such syscalls, a seccomp filter, a kernel without keys), it says so
once and the keychain keeps credentials in memory only, as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import platform
import threading

from lazypull.registry.credentials import Credential

log = logging.getLogger(__name__)

KEYRING = "lazypull:keychain"
KEYRING_ENV = "LAZYPULL_KEYRING"  # another name, for several daemons on one host (tests)
PREFIX = "lazypull:cred:"
TTL = 24 * 3600  # seconds a credential outlives the daemon that kept it (renewed while it runs)

# <linux/keyctl.h>
KEY_SPEC_PROCESS_KEYRING = -2
KEY_SPEC_USER_KEYRING = -4
KEYCTL_SETPERM = 5
KEYCTL_DESCRIBE = 6
KEYCTL_LINK = 8
KEYCTL_UNLINK = 9
KEYCTL_SEARCH = 10
KEYCTL_READ = 11
KEYCTL_SET_TIMEOUT = 15
KEYCTL_INVALIDATE = 21
# possessor: all; user (uid): view, read, write, search, setattr; group and others: nothing
KEY_POS_ALL = 0x3F000000
KEY_USR_VIEW, KEY_USR_READ, KEY_USR_WRITE, KEY_USR_SEARCH, KEY_USR_SETATTR = (
    0x00010000,
    0x00020000,
    0x00040000,
    0x00080000,
    0x00200000,
)
PERM = KEY_POS_ALL | KEY_USR_VIEW | KEY_USR_READ | KEY_USR_WRITE | KEY_USR_SEARCH | KEY_USR_SETATTR
RING_PERM = PERM | 0x00100000  # KEY_USR_LINK: keys are linked into it

_GONE = (errno.ENOKEY, errno.EKEYEXPIRED, errno.EKEYREVOKED)

_SYSCALLS = {  # (add_key, keyctl)
    "x86_64": (248, 250),
    "aarch64": (217, 219),
    "arm64": (217, 219),
    "riscv64": (217, 219),
    "ppc64le": (269, 271),
    "s390x": (278, 280),
}


class KeyringUnavailable(OSError):
    """The kernel keyring cannot be used from this process."""


class _Syscalls:
    """``add_key`` and ``keyctl`` as ``syscall(2)``; errors raise OSError with errno."""

    def __init__(self) -> None:
        nrs = _SYSCALLS.get(platform.machine())
        if nrs is None:
            raise KeyringUnavailable(errno.ENOSYS, f"no keyring syscall numbers for {platform.machine()}")
        self.add_key_nr, self.keyctl_nr = nrs
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long

    def _call(self, *args: object) -> int:
        r = int(self._syscall(*args))
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return r

    def add_key(self, type_: str, description: str, payload: bytes, keyring: int) -> int:
        buf = ctypes.create_string_buffer(payload, len(payload))
        return self._call(
            ctypes.c_long(self.add_key_nr),
            ctypes.c_char_p(type_.encode()),
            ctypes.c_char_p(description.encode()),
            buf,
            ctypes.c_size_t(len(payload)),
            ctypes.c_int(keyring),
        )

    def keyctl(self, op: int, *args: int | bytes | None) -> int:
        cargs: list[object] = []
        for a in args:
            cargs.append(ctypes.c_char_p(a) if isinstance(a, bytes) or a is None else ctypes.c_long(a))
        return self._call(ctypes.c_long(self.keyctl_nr), ctypes.c_long(op), *cargs)

    def read(self, op: int, key: int) -> bytes:
        """KEYCTL_READ / KEYCTL_DESCRIBE: the kernel says the size first, then fills the buffer."""
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._call(
                ctypes.c_long(self.keyctl_nr), ctypes.c_long(op), ctypes.c_long(key), buf, ctypes.c_long(size)
            )
            if n <= size:
                data = buf.raw[:n]
                ctypes.memset(buf, 0, size)  # the payload is a secret: no copy left in freed memory
                return data
            ctypes.memset(buf, 0, size)
            size = n


class KernelKeyring:
    """Credentials per image key in a named keyring under the user keyring (thread-safe)."""

    def __init__(self, name: str | None = None, ttl: int = TTL) -> None:
        self.name = name or os.environ.get(KEYRING_ENV) or KEYRING
        self.ttl = ttl
        self._sys = _Syscalls()
        self._lock = threading.Lock()
        self._ring: int | None = None

    def ring(self) -> int:
        """The keyring's serial: found under ``@u`` if an earlier daemon made it, else made now."""
        with self._lock:
            if self._ring is None:
                try:
                    self._ring = self._sys.keyctl(
                        KEYCTL_SEARCH, KEY_SPEC_USER_KEYRING, b"keyring", self.name.encode(), 0
                    )
                except OSError as e:
                    if e.errno not in _GONE:
                        raise
                    self._ring = self._add("keyring", self.name, b"", RING_PERM, 0, KEY_SPEC_USER_KEYRING)
            return self._ring

    def _add(self, type_: str, description: str, payload: bytes, perm: int, ttl: int, dest: int) -> int:
        """A new key in *dest*, replacing one of the same description there.

        It is made in this process's keyring and set up there (its permissions and timeout
        need the possessor's rights: a service's session keyring does not reach ``@u``, so
        this process would not possess it in *dest*), then linked into *dest*."""
        serial = self._sys.add_key(type_, description, payload, KEY_SPEC_PROCESS_KEYRING)
        try:
            self._sys.keyctl(KEYCTL_SETPERM, serial, perm)
            if ttl > 0:
                self._sys.keyctl(KEYCTL_SET_TIMEOUT, serial, ttl)
            self._sys.keyctl(KEYCTL_LINK, serial, dest)
        finally:
            try:
                self._sys.keyctl(KEYCTL_UNLINK, serial, KEY_SPEC_PROCESS_KEYRING)
            except OSError:
                pass
        return serial

    def put(self, key: str, cred: Credential) -> None:
        payload = json.dumps(
            {"username": cred.username, "secret": cred.secret, "identity_token": cred.identity_token}
        ).encode()
        try:
            self._add("user", PREFIX + key, payload, PERM, self.ttl, self.ring())
        except OSError as e:
            if e.errno not in _GONE:
                raise
            with self._lock:  # the keyring was invalidated or timed out (by hand): make it again
                self._ring = None
            self._add("user", PREFIX + key, payload, PERM, self.ttl, self.ring())

    def touch(self, key: str) -> bool:
        """Start *key*'s timeout again (it is still in use); False if it is gone."""
        try:
            serial = self._sys.keyctl(KEYCTL_SEARCH, self.ring(), b"user", (PREFIX + key).encode(), 0)
            if self.ttl > 0:
                self._sys.keyctl(KEYCTL_SET_TIMEOUT, serial, self.ttl)
            return True
        except OSError as e:
            if e.errno in _GONE:
                return False
            raise

    def get(self, key: str) -> Credential | None:
        try:
            serial = self._sys.keyctl(KEYCTL_SEARCH, self.ring(), b"user", (PREFIX + key).encode(), 0)
        except OSError as e:
            if e.errno in _GONE:
                return None
            raise
        return _credential(self._sys.read(KEYCTL_READ, serial))

    def remove(self, key: str) -> None:
        try:
            serial = self._sys.keyctl(KEYCTL_SEARCH, self.ring(), b"user", (PREFIX + key).encode(), 0)
            self._sys.keyctl(KEYCTL_INVALIDATE, serial)
        except OSError as e:
            if e.errno not in _GONE:
                raise

    def items(self) -> list[tuple[str, Credential]]:
        """Every live credential in the keyring (expired and unreadable keys are skipped)."""
        raw = self._sys.read(KEYCTL_READ, self.ring())
        serials = [int.from_bytes(raw[i : i + 4], "little", signed=True) for i in range(0, len(raw) - 3, 4)]
        out: list[tuple[str, Credential]] = []
        for serial in serials:
            try:
                desc = self._sys.read(KEYCTL_DESCRIBE, serial).rstrip(b"\0").decode()
                type_, _uid, _gid, _perm, description = desc.split(";", 4)
                if type_ != "user" or not description.startswith(PREFIX):
                    continue
                cred = _credential(self._sys.read(KEYCTL_READ, serial))
            except (OSError, ValueError):
                continue  # gone (timed out, invalidated) since the list was read
            if cred is not None:
                out.append((description[len(PREFIX) :], cred))
        return out

    def clear(self) -> None:
        """Forget every credential: the keyring itself is invalidated (the kernel unlinks it)."""
        with self._lock:
            ring, self._ring = self._ring, None
        if ring is None:
            try:
                ring = self._sys.keyctl(KEYCTL_SEARCH, KEY_SPEC_USER_KEYRING, b"keyring", self.name.encode(), 0)
            except OSError:
                return
        try:
            self._sys.keyctl(KEYCTL_INVALIDATE, ring)
        except OSError:
            pass


def _credential(payload: bytes) -> Credential | None:
    try:
        d = json.loads(payload)
        if not isinstance(d, dict) or not d.get("secret"):
            return None
        return Credential(str(d.get("username", "")), str(d["secret"]), bool(d.get("identity_token")))
    except ValueError:
        return None


def open_keyring(name: str | None = None, ttl: int = TTL) -> KernelKeyring | None:
    """The keyring if this process can use it, else None (said once, in the log)."""
    try:
        kr = KernelKeyring(name, ttl)
        kr.ring()
        return kr
    except OSError as e:
        log.warning(
            "the kernel keyring is not usable here (%s): the kubelet's credentials are kept in memory only "
            "and are lost when the daemon restarts",
            os.strerror(e.errno) if e.errno else e,
        )
        return None
