"""The control plane's SQLite store: every config version of every service, and node reports."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AckRecord",
    "ConfigRepository",
    "StoredConfig",
    "UnknownService",
    "UnknownVersion",
    "VersionInfo",
]

SCHEMA_VERSION = 1

# Versions are numbered per service from 1. `rollback_of` remembers which version a rollback
# copied, so the history reads "7 is a copy of 4" instead of an unexplained repeat.
# node_reports keeps the last ACK or NACK of each node for each service; `applied_version` is
# the last version that node ACKed, which a NACK leaves alone.
SCHEMA = """
CREATE TABLE IF NOT EXISTS config_versions (
    service     TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    config_json TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    rollback_of INTEGER,
    PRIMARY KEY (service, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS node_reports (
    node_id         TEXT    NOT NULL,
    service         TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    nonce           TEXT    NOT NULL,
    accepted        INTEGER NOT NULL,
    error_detail    TEXT    NOT NULL,
    applied_version INTEGER,
    updated_at      REAL    NOT NULL,
    PRIMARY KEY (service, node_id)
) WITHOUT ROWID;
"""


class UnknownService(LookupError):
    """The service has no config version at all."""


class UnknownVersion(LookupError):
    """The service exists, but not with that version."""


@dataclass(frozen=True)
class StoredConfig:
    """One stored version of a service's config, as the compact JSON it was stored as."""

    service: str
    version: int
    config_json: str
    created_at: float  # Unix time
    rollback_of: int | None = None


@dataclass(frozen=True)
class VersionInfo:
    """A version in a service's history, without its (possibly large) config."""

    version: int
    created_at: float
    rollback_of: int | None


@dataclass(frozen=True)
class AckRecord:
    """A node's last report on one service: ACK or NACK of `version`, and what it runs."""

    node_id: str
    service: str
    version: int
    nonce: str
    accepted: bool
    error_detail: str
    applied_version: int | None  # the last version this node ACKed; a NACK does not move it
    updated_at: float  # Unix time


class ConfigRepository:
    """Versioned configs and node reports in one SQLite file; safe to call from any thread."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self._clock = clock
        # One connection behind a lock: SQLite serialises writers anyway, and the control
        # plane's reads are single-row lookups, so a pool would add code and win nothing.
        # check_same_thread=False because asyncio.to_thread runs calls on any worker thread;
        # the lock is what makes that safe. isolation_level=None: transactions are explicit.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._setup()
        except BaseException:
            self._db.close()
            raise

    def _setup(self) -> None:
        db = self._db
        # A second process (a backup, the sqlite3 shell) may hold the lock for a moment.
        db.execute("PRAGMA busy_timeout = 5000")
        # WAL: another process reading the file (a backup, the sqlite3 shell) never blocks a
        # PUT, and a commit costs one fsync of the log; a crash mid-write keeps the last commit.
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal" and self.path != ":memory:":
            raise sqlite3.OperationalError(f"{self.path}: cannot use WAL journal mode (got {mode})")
        # FULL, not WAL's usual NORMAL: a PUT answered 200 must survive a power cut, or nodes
        # could hold a version the store has forgotten and then ignore its reuse as "not newer".
        db.execute("PRAGMA synchronous = FULL")
        stored = db.execute("PRAGMA user_version").fetchone()[0]
        if stored > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"{self.path} has schema version {stored}; this code knows up to {SCHEMA_VERSION}"
            )
        # One transaction: a second process starting on the same file sees all or nothing.
        db.executescript(
            f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so "read the latest version, insert
        # the next" cannot interleave with another writer and hand out one number twice.
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def close(self) -> None:
        """Close the database; later calls fail."""
        with self._lock:
            self._db.close()

    # -- configs ------------------------------------------------------------------------------

    def put(self, service: str, config_json: str) -> StoredConfig:
        """Store `config_json` as the service's next version (1 for a new service)."""
        with self._transaction() as db:
            return self._insert(db, service, config_json, rollback_of=None)

    def rollback(self, service: str, version: int) -> StoredConfig:
        """Store a copy of `version` as the next version; raise UnknownService/UnknownVersion."""
        # The copy gets a new, higher number instead of making `version` current again:
        # every client applies only versions newer than the one it has, so going back to an
        # old number would be ignored by exactly the nodes that need the rollback.
        with self._transaction() as db:
            old = self._select(db, service, version)
            return self._insert(db, service, old.config_json, rollback_of=version)

    def latest(self, service: str) -> StoredConfig | None:
        """The newest version of the service, or None when it has none."""
        with self._reading() as db:
            row = db.execute(
                "SELECT service, version, config_json, created_at, rollback_of"
                " FROM config_versions WHERE service = ? ORDER BY version DESC LIMIT 1",
                (service,),
            ).fetchone()
        return None if row is None else StoredConfig(*row)

    def get(self, service: str, version: int) -> StoredConfig:
        """One version of the service; raise UnknownService or UnknownVersion."""
        with self._reading() as db:
            return self._select(db, service, version)

    def versions(self, service: str, *, limit: int = 100) -> list[VersionInfo]:
        """The service's newest `limit` versions, newest first; raise UnknownService."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT version, created_at, rollback_of FROM config_versions"
                " WHERE service = ? ORDER BY version DESC LIMIT ?",
                (service, limit),
            ).fetchall()
        if not rows:
            raise UnknownService(service)
        return [VersionInfo(*row) for row in rows]

    def services(self) -> dict[str, int]:
        """Every service with a config, sorted by name, mapped to its newest version."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT service, MAX(version) FROM config_versions"
                " GROUP BY service ORDER BY service"
            )
            return dict(rows.fetchall())

    def _select(self, db: sqlite3.Connection, service: str, version: int) -> StoredConfig:
        row = db.execute(
            "SELECT service, version, config_json, created_at, rollback_of"
            " FROM config_versions WHERE service = ? AND version = ?",
            (service, version),
        ).fetchone()
        if row is not None:
            return StoredConfig(*row)
        exists = db.execute(
            "SELECT 1 FROM config_versions WHERE service = ? LIMIT 1", (service,)
        ).fetchone()
        raise UnknownVersion(f"{service} v{version}") if exists else UnknownService(service)

    def _insert(
        self, db: sqlite3.Connection, service: str, config_json: str, *, rollback_of: int | None
    ) -> StoredConfig:
        (last,) = db.execute(
            "SELECT COALESCE(MAX(version), 0) FROM config_versions WHERE service = ?", (service,)
        ).fetchone()
        stored = StoredConfig(service, last + 1, config_json, self._clock(), rollback_of)
        db.execute(
            "INSERT INTO config_versions"
            " (service, version, config_json, created_at, rollback_of) VALUES (?, ?, ?, ?, ?)",
            (stored.service, stored.version, stored.config_json, stored.created_at, rollback_of),
        )
        return stored

    # -- node reports -------------------------------------------------------------------------

    def record_ack(
        self,
        node_id: str,
        service: str,
        version: int,
        nonce: str,
        accepted: bool,
        error_detail: str = "",
    ) -> bool:
        """Record a node's ACK or NACK; False (nothing stored) if it holds a newer one already."""
        with self._transaction() as db:
            self._select(db, service, version)  # raises for an unknown service or version
            row = db.execute(
                "SELECT version, applied_version FROM node_reports"
                " WHERE service = ? AND node_id = ?",
                (service, node_id),
            ).fetchone()
            if row is not None and row[0] > version:
                # A late reply about an older push: the newer report is the truth.
                return False
            applied = row[1] if row is not None else None
            if accepted:
                applied = version if applied is None else max(applied, version)
            db.execute(
                "INSERT OR REPLACE INTO node_reports (node_id, service, version, nonce, accepted,"
                " error_detail, applied_version, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    node_id, service, version, nonce, int(accepted),
                    "" if accepted else error_detail, applied, self._clock(),
                ),
            )
            return True

    def acks(self, service: str) -> list[AckRecord]:
        """Every node's last report on the service, sorted by node id."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT node_id, service, version, nonce, accepted, error_detail,"
                " applied_version, updated_at FROM node_reports WHERE service = ? ORDER BY node_id",
                (service,),
            ).fetchall()
        return [AckRecord(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7]) for r in rows]
