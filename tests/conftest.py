"""Fixtures every test folder may use: the control-plane database on either engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from router.state.db import Database, SqliteDatabase
from router.state.testing import PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole run (started on first use, ~1 s)."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    return postgres.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Database]]:
    """Opens the test's database (a new connection each call, like a gateway restart or a second
    gateway), on SQLite and on PostgreSQL: the stores' tests run against both engines."""
    opened: list[Database] = []
    if request.param == "sqlite":
        def make() -> Database:
            opened.append(SqliteDatabase(tmp_path / "state.db"))
            return opened[-1]
    else:
        from router.state.postgres import PostgresDatabase

        url = request.getfixturevalue("postgres_url")

        def make() -> Database:
            opened.append(PostgresDatabase(url))
            return opened[-1]
    try:
        yield make
    finally:
        for database in opened:
            database.close()
