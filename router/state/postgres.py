"""The control plane's database on PostgreSQL (``ZEROSERVE_DATABASE_URL=postgresql://...``): what lets
several gateways share one state.

The driver is psycopg 3: the stores are synchronous code called from the gateway's handlers, the same
as on SQLite, and psycopg has a synchronous API (asyncpg has only an async one, so every store would
have had to become async for one engine), ships binary wheels with libpq, and is the maintained
successor of psycopg2.

Each gateway holds one connection (control-plane calls are short and rare; the data path never reads
the database per request). Every write transaction first takes one transaction-scoped advisory lock,
so writers are serialised across gateways exactly as SQLite's ``BEGIN IMMEDIATE`` serialises them in
one process: the stores' read-then-write steps (the next config version, a token revoke) stay correct
with no per-table locking to get wrong.

When the server is unreachable, a call fails at once with ``DatabaseUnavailable`` (503) rather than
hanging: connecting is bounded by ``connect_timeout_s``, statements by ``statement_timeout_s``, a dead
peer is noticed by TCP keepalives, and after a failure no new connection is tried for
``retry_after_s`` so that a burst of control-plane calls does not stall the event loop once each.
The next call after that reconnects by itself.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from router.state.db import _BOOKKEEPING, _BUMP, Connection, Cursor, Database, DatabaseUnavailable, redact_url

logger = logging.getLogger(__name__)

# The advisory lock every writer takes (an arbitrary constant: "zeroserve" in ASCII, truncated to fit
# a signed 64-bit key).
WRITE_LOCK_KEY = 0x7A65726F73657276
_AUTOINCREMENT = re.compile(r"\bINTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT\b", re.IGNORECASE)
_INTEGER = re.compile(r"\bINTEGER\b", re.IGNORECASE)


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 3.0,
        statement_timeout_s: float = 10.0,
        retry_after_s: float = 1.0,
    ) -> None:
        self.url = url
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_s = statement_timeout_s
        self._retry_after_s = retry_after_s
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._retry_at = 0.0
        self._last_error = ""
        with self.transaction(notify=False) as conn:
            for statement in _BOOKKEEPING:
                conn.execute(self.dialect_sql(statement))

    @property
    def location(self) -> str:
        return redact_url(self.url)

    def dialect_sql(self, statement: str) -> str:
        # Timestamps are in ms (they overflow PostgreSQL's 32-bit INTEGER); SQLite's INTEGER is 64-bit.
        return _INTEGER.sub("BIGINT", _AUTOINCREMENT.sub("BIGSERIAL PRIMARY KEY", statement))

    # ---- the Database interface ----------------------------------------------------------------

    @contextmanager
    def transaction(self, *, notify: bool = True) -> Iterator[Connection]:
        with self._lock:
            conn = self._connection()
            with self._unavailable_on_failure():
                conn.execute("BEGIN")
                try:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
                    yield _Placeholders(conn)
                    if notify:
                        conn.execute(_BUMP)
                except BaseException:
                    if not conn.closed:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            conn = self._connection()
            with self._unavailable_on_failure():
                return list(conn.execute(placeholders(sql), tuple(params)).fetchall())

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Any | None:
        with self._lock:
            conn = self._connection()
            with self._unavailable_on_failure():
                return conn.execute(placeholders(sql), tuple(params)).fetchone()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ---- the connection ------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if time.monotonic() < self._retry_at:
            raise DatabaseUnavailable(f"the database is unreachable: {self._last_error}")
        try:
            self._conn = psycopg.connect(
                self.url,
                autocommit=True,  # transactions are explicit: BEGIN ... COMMIT in transaction()
                row_factory=_row_factory,
                connect_timeout=max(1, round(self._connect_timeout_s)),
                options=f"-c statement_timeout={int(self._statement_timeout_s * 1000)}",
                keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                application_name="zeroserve-gateway",
            )
        except psycopg.Error as error:
            self._failed(error)
            raise DatabaseUnavailable(f"the database is unreachable: {self._last_error}") from None
        if self._last_error:
            logger.info("database connection to %s restored", self.location)
            self._last_error = ""
        return self._conn

    @contextmanager
    def _unavailable_on_failure(self) -> Iterator[None]:
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            # The connection is gone (server down or restarted, network cut, statement timeout): drop
            # it; the next call after retry_after_s connects again.
            self._failed(error)
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            raise DatabaseUnavailable(f"the database is unreachable: {self._last_error}") from None

    def _failed(self, error: Exception) -> None:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not self._last_error:
            logger.warning("database %s unreachable: %s", self.location, message)
        self._last_error = message
        self._retry_at = time.monotonic() + self._retry_after_s


class _Placeholders:
    """A psycopg connection that takes the stores' ``?`` placeholders."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = (), /) -> Cursor:
        return self._conn.execute(placeholders(sql), tuple(params))

    def executemany(self, sql: str, rows: Any, /) -> Cursor:
        cursor = self._conn.cursor()
        cursor.executemany(placeholders(sql), [tuple(row) for row in rows])
        return cursor


_TRANSLATED: dict[str, str] = {}


def placeholders(sql: str) -> str:
    """``sql`` with ``?`` placeholders as psycopg's ``%s`` (and a literal ``%`` doubled), leaving
    question marks inside string literals alone."""
    translated = _TRANSLATED.get(sql)
    if translated is not None:
        return translated
    out: list[str] = []
    quoted = False
    for char in sql:
        if char == "'":
            quoted = not quoted
            out.append(char)
        elif char == "%":
            out.append("%%")
        elif char == "?" and not quoted:
            out.append("%s")
        else:
            out.append(char)
    translated = "".join(out)
    if len(_TRANSLATED) < 1024:
        _TRANSLATED[sql] = translated
    return translated


class _Row(tuple[Any, ...]):
    """A result row that answers ``row["column"]`` and ``row[0]`` alike, as ``sqlite3.Row`` does."""

    names: dict[str, int] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self.names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self.names)


def _row_factory(cursor: Any) -> Any:
    description = cursor.description
    if description is None:
        return tuple
    names = {column.name: index for index, column in enumerate(description)}
    return type("Row", (_Row,), {"names": names})
