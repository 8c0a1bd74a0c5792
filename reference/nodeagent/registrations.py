"""The node agent's record of registered apps, so a restarted agent serves them on the same ports.

An app learns its outbound port once, when it registers, and keeps calling it. Without this
record a restarted agent would come back with no listeners at all, and every app on the node
would fail its calls until its next registration refresh.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Registration", "RegistrationStore"]

log = logging.getLogger(__name__)

# The file sits next to the per-service config cache, whose files all end in ".json", so no
# service name can collide with it.
FILE_NAME = "registrations.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS registrations (
    app_id  TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    port    INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535)
)
"""


@dataclass(frozen=True)
class Registration:
    """One app as it was registered: its id, its service, and the port it was given."""

    app_id: str
    service: str
    port: int


class RegistrationStore:
    """Registered apps in SQLite (`<directory>/registrations.sqlite3`); every change commits at once.

    Registrations change a few times a minute at most, so each call opens its own connection:
    nothing is held open across the agent's life, and a damaged file costs one warning.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / FILE_NAME

    def load(self) -> list[Registration]:
        """Every recorded registration; an unreadable or damaged file reads as none."""
        try:
            if not self.path.exists():
                return []
            with self._connect() as db:
                rows = db.execute(
                    "SELECT app_id, service, port FROM registrations ORDER BY app_id"
                ).fetchall()
        except (sqlite3.Error, OSError) as error:
            # The apps register again on their own; a bad file must not stop the agent. A
            # damaged one is moved aside (kept for a look) so that new registrations are kept.
            log.warning("ignoring app registrations in %s: %s", self.path, error)
            if isinstance(error, sqlite3.DatabaseError):
                with contextlib.suppress(OSError):
                    self.path.replace(self.path.with_name(f"{FILE_NAME}.damaged"))
            return []
        return [Registration(app_id, service, port) for app_id, service, port in rows]

    def save(self, registration: Registration) -> None:
        """Record `registration`, replacing one for the same app; log, never raise, on failure."""
        self._change(
            "INSERT OR REPLACE INTO registrations (app_id, service, port) VALUES (?, ?, ?)",
            (registration.app_id, registration.service, registration.port),
        )

    def remove(self, app_id: str) -> None:
        """Forget `app_id`; log, never raise, on failure."""
        self._change("DELETE FROM registrations WHERE app_id = ?", (app_id,))

    def _change(self, statement: str, parameters: tuple[object, ...]) -> None:
        try:
            with self._connect() as db:
                db.execute(statement, parameters)
        except (sqlite3.Error, OSError) as error:
            # The app is served either way; only a later restart would lose it.
            log.warning("could not update app registrations in %s: %s", self.path, error)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one transaction: committed if the block ends well, then closed."""
        # Owner-only folder, as for the config cache: app ids name workloads on this node.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5.0)
        try:
            with db:
                db.execute(_SCHEMA)
                yield db
        finally:
            db.close()
