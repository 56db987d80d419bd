"""The gateway's SQLite database: one file under ``ZEROSERVE_HOME``, WAL mode, simple migrations.

Every component that keeps durable state (endpoints, tokens, permissions, ...) shares one ``Database``
and owns its tables through its own list of migration steps, applied once each, in order, and
recorded per component in ``schema_migrations``. A commit is durable when ``transaction()`` returns:
``synchronous=FULL`` makes it survive a SIGKILL of the gateway (and a power cut) at a cost of one fsync
per control-plane change, which is rare enough not to matter.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# A migration step is a script of one or more SQL statements.
MigrationSteps = Sequence[str]


class Database:
    """A single connection shared by the gateway's components (calls are short; a lock serialises them)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path) if str(path) != ":memory:" else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only from its first byte (it holds token hashes); SQLite gives its -wal and -shm
            # files the same permissions.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so transactions are explicit.
        self._conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=10.0
        )
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )

    @property
    def journal_mode(self) -> str:
        row = self.query_one("PRAGMA journal_mode")
        return str(row[0]) if row is not None else ""

    def schema_version(self, component: str) -> int:
        row = self.query_one("SELECT version FROM schema_migrations WHERE component = ?", (component,))
        return int(row["version"]) if row is not None else 0

    def migrate(self, component: str, steps: MigrationSteps) -> int:
        """Apply the steps of ``component`` not applied yet; return the resulting schema version.

        Steps are append-only: step ``i`` is applied exactly once, in its own transaction together with
        the version bump, so a crash between steps leaves a consistent, resumable database.
        """
        current = self.schema_version(component)
        if current > len(steps):
            raise RuntimeError(
                f"database schema of {component!r} is version {current}, newer than this code knows"
                f" ({len(steps)}); upgrade zeroserve"
            )
        for version in range(current + 1, len(steps) + 1):
            with self.transaction() as conn:
                for statement in _split_statements(steps[version - 1]):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations(component, version) VALUES (?, ?)"
                    " ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                    (component, version),
                )
        return len(steps)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
            return row

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _split_statements(script: str) -> list[str]:
    # sqlite3's executescript() would COMMIT our transaction; split into complete statements instead
    # (complete_statement knows about ';' inside string literals and triggers).
    statements: list[str] = []
    start = 0
    for index, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : index + 1]):
            statements.append(script[start : index + 1].strip())
            start = index + 1
    if script[start:].strip():
        raise ValueError(f"incomplete SQL statement in migration: {script[start:].strip()!r}")
    return statements
