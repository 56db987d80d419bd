"""The control plane's database: SQLite under ``ZEROSERVE_HOME`` (the embedded default) or PostgreSQL
(``ZEROSERVE_DATABASE_URL``, shared by several gateways), behind one interface.

Every component that keeps durable state (endpoints, tokens, permissions, ...) shares one ``Database``
and owns its tables through its own list of migration steps, applied once each, in order, and
recorded per component in ``schema_migrations``. Steps are written once, in the SQL both engines
share; ``Database.dialect_sql`` adapts the few words that differ (64-bit integers and generated keys on
PostgreSQL). Statements use ``?`` placeholders on both.

A write transaction that changes what other gateways must see (``transaction(notify=True)``, the
default) also bumps ``state_changes.seq``: every gateway polls that one number (``change_seq``) and
reloads what it caches when it moves, so a change made through one gateway is in force on all of them
within a poll interval.
"""

from __future__ import annotations

import abc
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from runtime.errors import ZeroserveError

# A migration step is a script of one or more SQL statements.
MigrationSteps = Sequence[str]

_BOOKKEEPING = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS state_changes (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL)",
    "INSERT INTO state_changes(id, seq) VALUES (1, 0) ON CONFLICT(id) DO NOTHING",
)
_BUMP = "UPDATE state_changes SET seq = seq + 1 WHERE id = 1"


class DatabaseUnavailable(ZeroserveError):
    """The database cannot be reached (PostgreSQL down, connection lost): control-plane reads and writes
    answer 503 until it is back; queries keep flowing to the replicas the gateway knows."""

    status_code = 503
    error_code = "TEMPORARILY_UNAVAILABLE"


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What a transaction body gets: ``execute`` and ``executemany`` with ``?`` placeholders."""

    def execute(self, sql: str, params: Any = (), /) -> Cursor: ...

    def executemany(self, sql: str, rows: Any, /) -> Cursor: ...


class Database(abc.ABC):
    """One connection per gateway process, shared by its components (calls are short; a lock
    serialises them). Rows answer both ``row["column"]`` and ``row[index]``."""

    dialect: str

    @abc.abstractmethod
    def transaction(self, *, notify: bool = True) -> AbstractContextManager[Connection]:
        """A write transaction, serialised with every other writer of the database (on PostgreSQL,
        across gateways), committed when the block ends and rolled back on any exception."""

    @abc.abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

    @abc.abstractmethod
    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Any | None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the data lives, for people (a path, or the URL without its password)."""

    def dialect_sql(self, statement: str) -> str:
        """``statement`` as this engine wants it (the identity for SQLite)."""
        return statement

    def change_seq(self) -> int:
        """A number that grows whenever a notifying transaction commits, on any gateway."""
        row = self.query_one("SELECT seq FROM state_changes WHERE id = 1")
        return int(row[0]) if row is not None else 0

    def schema_version(self, component: str) -> int:
        row = self.query_one("SELECT version FROM schema_migrations WHERE component = ?", (component,))
        return int(row["version"]) if row is not None else 0

    def schema_versions(self) -> dict[str, int]:
        return {row["component"]: int(row["version"])
                for row in self.query("SELECT component, version FROM schema_migrations ORDER BY component")}

    def migrate(self, component: str, steps: MigrationSteps) -> int:
        """Apply the steps of ``component`` not applied yet; return the resulting schema version.

        Steps are append-only: step ``i`` is applied exactly once, in its own transaction together with
        the version bump, so a crash between steps leaves a consistent, resumable database, and two
        gateways starting at once against one PostgreSQL apply each step once (the transaction is
        serialised and the version read again inside it).
        """
        if self.schema_version(component) > len(steps):
            raise RuntimeError(
                f"database schema of {component!r} is version {self.schema_version(component)}, newer"
                f" than this code knows ({len(steps)}); upgrade zeroserve"
            )
        for version in range(1, len(steps) + 1):
            if self.schema_version(component) >= version:
                continue
            with self.transaction(notify=False) as conn:
                row = conn.execute(
                    "SELECT version FROM schema_migrations WHERE component = ?", (component,)
                ).fetchone()
                if row is not None and int(row[0]) >= version:
                    continue  # another gateway applied it meanwhile
                for statement in split_statements(steps[version - 1]):
                    conn.execute(self.dialect_sql(statement))
                conn.execute(
                    "INSERT INTO schema_migrations(component, version) VALUES (?, ?)"
                    " ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                    (component, version),
                )
        return len(steps)


class SqliteDatabase(Database):
    """SQLite in WAL mode. A commit is durable when ``transaction()`` returns: ``synchronous=FULL`` makes
    it survive a SIGKILL of the gateway (and a power cut) at a cost of one fsync per control-plane
    change, which is rare enough not to matter."""

    dialect = "sqlite"

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
        for statement in _BOOKKEEPING:
            self._conn.execute(statement)

    @property
    def location(self) -> str:
        return str(self.path) if self.path is not None else ":memory:"

    @property
    def journal_mode(self) -> str:
        row = self.query_one("PRAGMA journal_mode")
        return str(row[0]) if row is not None else ""

    @contextmanager
    def transaction(self, *, notify: bool = True) -> Iterator[Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                if notify:
                    self._conn.execute(_BUMP)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Any | None:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_database(url: str | None, sqlite_path: Path) -> Database:
    """PostgreSQL when ``url`` names it (``postgresql://...``), else SQLite at ``sqlite_path``."""
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                f"ZEROSERVE_DATABASE_URL must be a postgresql:// URL, got {redact_url(url)!r}"
                " (leave it unset for the embedded SQLite database)"
            )
        from router.state.postgres import PostgresDatabase

        return PostgresDatabase(url)
    return SqliteDatabase(sqlite_path)


def redact_url(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user + ':***@' if ':' in credentials else user + '@'}{host}"


def split_statements(script: str) -> list[str]:
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
