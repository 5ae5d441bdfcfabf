"""The kubelet's image matching rules, for ``matchImages`` and the keys of a provider's ``auth``.

Both sides are schemeless URLs (``host[:port][/path]``). A pattern matches an image when:
the ports are equal (none on both sides, or the same number); the hosts have the same
number of DNS labels and each label of the pattern globs the image's label (``*``, ``?``
and ``[...]`` as Go's ``filepath.Match``: ``*.example.com`` matches ``a.example.com`` but
not ``example.com`` nor ``a.b.example.com``); and the pattern's path is a plain string
prefix of the image's (``reg.io/team`` matches ``reg.io/team/app`` and ``reg.io/teamx``).
These are the kubelet's rules exactly, so a config written for it matches the same images.
"""

from __future__ import annotations

import functools
import re

from lazypull.errors import LazypullError


class BadPattern(LazypullError):
    """A glob the kubelet would refuse (``filepath.ErrBadPattern``) or an unparseable URL."""


def split_url(text: str) -> tuple[str, str, str]:
    """(host, port, path) of a schemeless URL; a scheme, if any, is dropped as the kubelet does."""
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
            break
    if "://" in text:
        raise BadPattern(f"{text!r}: only http and https URLs can be matched")
    hostport, slash, path = text.partition("/")
    path = slash + path
    for sep in ("?", "#"):  # a query or fragment is not part of the URL's path
        path = path.partition(sep)[0]
    host, port = hostport, ""
    if hostport.startswith("["):  # an IPv6 literal, [::1]:5000
        end = hostport.find("]")
        if end < 0 or (hostport[end + 1 :] and not hostport[end + 1 :].startswith(":")):
            raise BadPattern(f"{text!r}: malformed IPv6 host")
        host, port = hostport[1:end], hostport[end + 2 :]
    elif ":" in hostport:
        host, _, port = hostport.partition(":")
        if ":" in port:
            raise BadPattern(f"{text!r}: too many colons in the host")
    if not host:
        raise BadPattern(f"{text!r}: no host")
    return host, port, path


@functools.lru_cache(maxsize=1024)
def _glob_regex(glob: str) -> re.Pattern[str]:
    """Go's ``filepath.Match`` as a regex; '/' is the separator no wildcard crosses."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            i += 1
            if i >= n:
                raise BadPattern(f"{glob!r}: trailing backslash")
            out.append(re.escape(glob[i]))
        elif c == "[":
            i += 1
            negate = i < n and glob[i] == "^"
            if negate:
                i += 1
            ranges: list[str] = []
            first = True
            while True:
                if i >= n:
                    raise BadPattern(f"{glob!r}: unterminated character class")
                if glob[i] == "]" and not first:
                    break
                first = False
                lo, i = _class_char(glob, i)
                hi = lo
                if i < n and glob[i] == "-":
                    hi, i = _class_char(glob, i + 1)
                    if hi < lo:
                        raise BadPattern(f"{glob!r}: empty character range")
                ranges.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
            out.append(f"[{'^' if negate else ''}{''.join(ranges)}]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.S)


def _class_char(glob: str, i: int) -> tuple[str, int]:
    if i >= len(glob) or glob[i] in "-]":
        raise BadPattern(f"{glob!r}: malformed character class")
    if glob[i] == "\\":
        i += 1
        if i >= len(glob):
            raise BadPattern(f"{glob!r}: trailing backslash")
    return glob[i], i + 1


def check_pattern(pattern: str) -> None:
    """Raise :class:`BadPattern` unless *pattern* can be matched (config validation)."""
    host, _port, _path = split_url(pattern)
    for label in host.split("."):
        try:
            _glob_regex(label)
        except BadPattern as e:
            raise BadPattern(f"{pattern!r}: {e}") from None


def matches(pattern: str, image: str) -> bool:
    """Whether *pattern* (``matchImages`` entry or ``auth`` key) matches *image* (kubelet rules)."""
    try:
        ghost, gport, gpath = split_url(pattern)
        thost, tport, tpath = split_url(image)
        if gport != tport:
            return False
        glabels, tlabels = ghost.split("."), thost.split(".")
        if len(glabels) != len(tlabels):
            return False
        if not all(_glob_regex(g).match(t) for g, t in zip(glabels, tlabels, strict=True)):
            return False
    except BadPattern:
        return False
    return tpath.startswith(gpath)


def auth_key(key: str) -> str:
    """An ``auth`` key as the kubelet keeps it: no scheme, no ``/v1/`` or ``/v2/``, no lone '/'."""
    host, port, path = split_url(key)
    if path.startswith(("/v2/", "/v1/")):
        path = path[3:]
    hostport = f"[{host}]" if ":" in host else host
    hostport += f":{port}" if port else ""
    return hostport + path if path and path != "/" else hostport


DOCKER_HUB_KEYS = ("index.docker.io", "docker.io", "registry-1.docker.io")


def best_key(keys: list[str], image: str) -> str | None:
    """The key of *keys* the kubelet tries first for *image*: keys sorted in reverse (so
    ``reg.io/team/app`` before ``reg.io/team`` before ``reg.io``, and a literal host before a
    ``*`` glob), the first that matches. Docker Hub images fall back to its ``index`` key."""
    normal: dict[str, str] = {}
    for k in keys:
        try:
            normal.setdefault(auth_key(k), k)
        except BadPattern:
            continue
    for k in sorted(normal, reverse=True):
        if matches(k, image):
            return normal[k]
    if image.startswith("docker.io/"):
        for k in DOCKER_HUB_KEYS:
            if k in normal:
                return normal[k]
    return None
