"""containerd's filter syntax for snapshot Walk/List (``pkg/filters``), the part snapshots use.

A request carries filters that are ORed; each is a comma-separated AND of selectors
``FIELD``, ``FIELD==VALUE``, ``FIELD!=VALUE`` or ``FIELD~=REGEXP`` over ``name``,
``parent``, ``kind`` and ``labels."KEY"`` (or ``labels.KEY``); values may be quoted.
containerd asks, for every layer it pulls, for the snapshots whose
``containerd.io/snapshot.ref`` label names that layer: answering with only those keeps a
Walk from costing every snapshot of the node.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from lazypull.snapshot.store import InvalidArgument, Kind, Snapshot

_SELECTOR = re.compile(
    r'\s*(?P<field>[A-Za-z_][A-Za-z0-9_]*(?:\.(?:"(?:[^"\\]|\\.)*"|[A-Za-z0-9_./-]+))*)'
    r'\s*(?:(?P<op>==|!=|~=)\s*(?P<value>"(?:[^"\\]|\\.)*"|[^,]*))?\s*(?:,|$)'
)
_KINDS = {Kind.VIEW: "view", Kind.ACTIVE: "active", Kind.COMMITTED: "committed"}

Predicate = Callable[[Snapshot], bool]


class FilterError(InvalidArgument):
    pass


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] == '"':
        return re.sub(r"\\(.)", r"\1", s[1:-1])
    return s


def _field(snap: Snapshot, path: str) -> str | None:
    head, _, rest = path.partition(".")
    if head == "name":
        return snap.key
    if head == "parent":
        return snap.parent
    if head == "kind":
        return _KINDS.get(snap.kind, "")
    if head == "labels" and rest:
        return snap.labels.get(_unquote(rest))
    return None


def _selector(field: str, op: str | None, value: str | None) -> Predicate:
    if op is None:
        return lambda s: _field(s, field) not in (None, "")
    v = _unquote(value or "")
    if op == "==":
        return lambda s: _field(s, field) == v
    if op == "!=":
        return lambda s: _field(s, field) != v
    try:
        rx = re.compile(v)
    except re.error as e:
        raise FilterError(f"bad regexp in filter: {e}") from None
    return lambda s: (f := _field(s, field)) is not None and rx.search(f) is not None


def _selectors(text: str) -> list[tuple[str, str | None, str | None]]:
    out = []
    pos = 0
    while pos < len(text):
        m = _SELECTOR.match(text, pos)
        if m is None or m.end() == pos:
            raise FilterError(f"cannot parse filter {text!r} at {pos}")
        out.append((m["field"], m["op"], m["value"]))
        pos = m.end()
    return out


def parse(filters: list[str]) -> Predicate:
    """A predicate for *filters* (all snapshots match when there are none)."""
    alternatives = [[_selector(*sel) for sel in _selectors(t)] for t in filters if t.strip()]
    if not alternatives:
        return lambda s: True
    return lambda s: any(all(p(s) for p in sels) for sels in alternatives)


def index_hints(filters: list[str]) -> list[tuple[str, str]] | None:
    """For each alternative, an equality on ``name`` or ``parent`` that narrows the candidates
    to an indexed lookup; None when some alternative has none (then every snapshot is checked)."""
    hints: list[tuple[str, str]] = []
    for text in filters:
        if not text.strip():
            continue
        eq = [(f, _unquote(v or "")) for f, op, v in _selectors(text) if op == "==" and f in ("name", "parent")]
        if not eq:
            return None
        hints.append(eq[0])
    return hints or None
