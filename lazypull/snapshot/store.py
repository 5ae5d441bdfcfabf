"""Snapshot metadata in SQLite: crash-safe (WAL, one transaction per change).

Mirrors containerd's snapshot model: a key names an active or view snapshot, a name a
committed one; each has an id (its directory under ``snapshots/``), a parent, labels.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lazypull.errors import LazypullError


class Kind(enum.IntEnum):  # values match containerd's Kind enum
    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


class SnapshotError(LazypullError):
    code = "unknown"


class NotFound(SnapshotError):
    code = "not_found"


class AlreadyExists(SnapshotError):
    code = "already_exists"


class FailedPrecondition(SnapshotError):
    code = "failed_precondition"


class InvalidArgument(SnapshotError):
    code = "invalid_argument"


@dataclass
class Snapshot:
    id: int
    key: str
    parent: str
    kind: Kind
    created: float
    updated: float
    labels: dict[str, str] = field(default_factory=dict)
    remote: dict[str, str] | None = None  # lazily mounted layer: {"state_dir": ..., "digest": ...}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    parent TEXT NOT NULL DEFAULT '',
    kind INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    remote TEXT
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""
# A row of the table: id, key, parent, kind, created, updated, labels (JSON), remote (JSON or NULL).
_Row = tuple[int, str, str, int, float, float, str, str | None]


class MetaStore:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        self._db.close()

    def _row(self, r: _Row) -> Snapshot:
        return Snapshot(r[0], r[1], r[2], Kind(r[3]), r[4], r[5], json.loads(r[6]), json.loads(r[7]) if r[7] else None)

    def get(self, key: str) -> Snapshot:
        with self._lock:
            r = self._db.execute("SELECT * FROM snapshots WHERE key=?", (key,)).fetchone()
        if r is None:
            raise NotFound(f"snapshot {key} does not exist")
        return self._row(r)

    def find(self, key: str) -> Snapshot | None:
        try:
            return self.get(key)
        except NotFound:
            return None

    def all(self) -> list[Snapshot]:
        with self._lock:
            return [self._row(r) for r in self._db.execute("SELECT * FROM snapshots ORDER BY id")]

    def uses_layer(self, digest: str) -> bool:
        """Whether a snapshot is the lazily mounted layer *digest* (it then stays mounted)."""
        with self._lock:
            q = "SELECT 1 FROM snapshots WHERE remote IS NOT NULL AND json_extract(remote, '$.digest') = ? LIMIT 1"
            return self._db.execute(q, (digest,)).fetchone() is not None

    def children(self, key: str) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT key FROM snapshots WHERE parent=?", (key,))]

    def create(
        self, key: str, parent: str, kind: Kind, labels: dict[str, str], remote: dict[str, str] | None = None
    ) -> Snapshot:
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        now = time.time()
        with self._lock:
            if parent:
                p = self.get(parent)
                if p.kind != Kind.COMMITTED:
                    raise FailedPrecondition(f"parent {parent} is not committed")
            try:
                self._db.execute(
                    "INSERT INTO snapshots(key, parent, kind, created, updated, labels, remote) VALUES (?,?,?,?,?,?,?)",
                    (key, parent, int(kind), now, now, json.dumps(labels), json.dumps(remote) if remote else None),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"snapshot {key} already exists") from None
            return self.get(key)

    def create_committed(self, name: str, parent: str, labels: dict[str, str], remote: dict[str, str]) -> Snapshot:
        """A committed snapshot *name* in one transaction (one disk sync): what a lazily
        mounted layer becomes, instead of create, commit and set_remote one after another."""
        if not name:
            raise InvalidArgument("snapshot name must not be empty")
        now = time.time()
        with self._lock:
            if parent:
                p = self.get(parent)
                if p.kind != Kind.COMMITTED:
                    raise FailedPrecondition(f"parent {parent} is not committed")
            try:
                self._db.execute(
                    "INSERT INTO snapshots(key, parent, kind, created, updated, labels, remote) VALUES (?,?,?,?,?,?,?)",
                    (name, parent, int(Kind.COMMITTED), now, now, json.dumps(labels), json.dumps(remote)),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"snapshot {name} already exists") from None
            return self.get(name)

    def commit(self, name: str, key: str, labels: dict[str, str]) -> Snapshot:
        """The active snapshot *key* becomes committed *name*, keeping its id and directory."""
        now = time.time()
        with self._lock:
            s = self.get(key)
            if s.kind != Kind.ACTIVE:
                raise FailedPrecondition(f"snapshot {key} is not active")
            if self.find(name) is not None:
                raise AlreadyExists(f"snapshot {name} already exists")
            merged = {**s.labels, **labels}
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE snapshots SET key=?, kind=?, updated=?, labels=? WHERE id=?",
                    (name, int(Kind.COMMITTED), now, json.dumps(merged), s.id),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self.get(name)

    def remove(self, key: str) -> Snapshot:
        with self._lock:
            s = self.get(key)
            if self.children(key):
                raise FailedPrecondition(f"cannot remove snapshot {key}: it has children")
            self._db.execute("DELETE FROM snapshots WHERE id=?", (s.id,))
            return s

    def update_labels(self, key: str, labels: dict[str, str], paths: list[str] | None) -> Snapshot:
        with self._lock:
            s = self.get(key)
            if not paths:
                new = dict(labels)
            else:
                new = dict(s.labels)
                for p in paths:
                    if p == "labels":
                        new = dict(labels)
                    elif p.startswith("labels."):
                        k = p[len("labels.") :]
                        if k in labels:
                            new[k] = labels[k]
                        else:
                            new.pop(k, None)
                    else:
                        raise InvalidArgument(f"cannot update field {p!r} of a snapshot")
            self._db.execute(
                "UPDATE snapshots SET labels=?, updated=? WHERE id=?", (json.dumps(new), time.time(), s.id)
            )
            return self.get(key)

    def set_remote(self, key: str, remote: dict[str, str]) -> None:
        with self._lock:
            self._db.execute("UPDATE snapshots SET remote=? WHERE key=?", (json.dumps(remote), key))

    def chain(self, key: str) -> list[Snapshot]:
        """*key* and its ancestors, nearest first."""
        out = []
        cur: str = key
        while cur:
            s = self.get(cur)
            out.append(s)
            cur = s.parent
        return out
