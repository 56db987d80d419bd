from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from router.state.db import Database, DatabaseUnavailable, SqliteDatabase, open_database, redact_url
from router.state.testing import PostgresServer

OpenDb = Callable[[], Database]


def test_migrations_apply_once(open_db: OpenDb) -> None:
    db = open_db()
    steps = ["CREATE TABLE a (x INTEGER);", "CREATE TABLE b (y TEXT); INSERT INTO b VALUES ('one');"]
    assert db.migrate("thing", steps) == 2
    assert db.migrate("thing", steps) == 2  # applied once: a second run would fail on CREATE TABLE
    assert db.schema_version("thing") == 2
    assert db.schema_version("other") == 0
    # A later release appends a step; only it runs, also through another connection (a gateway
    # upgraded while the database stays).
    assert open_db().migrate("thing", [*steps, "ALTER TABLE a ADD COLUMN z TEXT;"]) == 3
    assert [r[0] for r in db.query("SELECT y FROM b")] == ["one"]
    assert db.schema_versions() == {"thing": 3}


def test_integers_hold_millisecond_timestamps(open_db: OpenDb) -> None:
    # Steps say INTEGER; on PostgreSQL that would be 32 bits, and every *_ms column would overflow.
    db = open_db()
    db.migrate("thing", ["CREATE TABLE a (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ms INTEGER NOT NULL);"])
    with db.transaction() as conn:
        conn.execute("INSERT INTO a(ts_ms) VALUES (?)", (1_790_000_000_000,))
        conn.execute("INSERT INTO a(ts_ms) VALUES (?)", (1_790_000_000_001,))
    rows = db.query("SELECT id, ts_ms FROM a ORDER BY id")
    assert [(row["id"], row[1]) for row in rows] == [(1, 1_790_000_000_000), (2, 1_790_000_000_001)]


def test_placeholders_leave_literals_alone(open_db: OpenDb) -> None:
    db = open_db()
    db.migrate("thing", ["CREATE TABLE a (x TEXT);"])
    with db.transaction() as conn:
        conn.executemany("INSERT INTO a VALUES (?)", [("50%",), ("what?",)])
    rows = db.query("SELECT x FROM a WHERE x LIKE '%?' OR x = ? ORDER BY x", ("50%",))
    assert [row["x"] for row in rows] == ["50%", "what?"]


def test_schema_newer_than_code_is_refused(open_db: OpenDb) -> None:
    db = open_db()
    db.migrate("thing", ["CREATE TABLE a (x INTEGER);", "CREATE TABLE b (x INTEGER);"])
    with pytest.raises(RuntimeError, match="newer than this code"):
        db.migrate("thing", ["CREATE TABLE a (x INTEGER);"])


def test_failed_migration_step_rolls_back_whole_step(open_db: OpenDb) -> None:
    db = open_db()
    with pytest.raises(Exception, match="missing"):
        db.migrate("thing", ["CREATE TABLE a (x INTEGER); INSERT INTO missing VALUES (1);"])
    assert db.schema_version("thing") == 0
    # Table a went with the failed step: creating it again works.
    assert db.migrate("thing", ["CREATE TABLE a (x INTEGER);"]) == 1


def test_transaction_rolls_back_on_error(open_db: OpenDb) -> None:
    db = open_db()
    db.migrate("thing", ["CREATE TABLE a (x INTEGER);"])
    with pytest.raises(ValueError), db.transaction() as conn:
        conn.execute("INSERT INTO a VALUES (1)")
        raise ValueError("boom")
    assert db.query("SELECT x FROM a") == []
    with db.transaction() as conn:  # the connection is usable after the rollback
        conn.execute("INSERT INTO a VALUES (2)")
    assert [row[0] for row in db.query("SELECT x FROM a")] == [2]


def test_change_seq_moves_for_every_gateway(open_db: OpenDb) -> None:
    one, other = open_db(), open_db()
    one.migrate("thing", ["CREATE TABLE a (x INTEGER);"])
    before = other.change_seq()
    with one.transaction() as conn:
        conn.execute("INSERT INTO a VALUES (1)")
    assert other.change_seq() == before + 1
    with one.transaction(notify=False) as conn:  # e.g. an audit record: nothing to reload
        conn.execute("INSERT INTO a VALUES (2)")
    assert other.change_seq() == before + 1


def test_concurrent_writers_are_serialised(open_db: OpenDb) -> None:
    # Read-then-write, as the stores do (the next config version): two gateways must not both read the
    # same maximum.
    first = open_db()
    first.migrate("thing", ["CREATE TABLE a (x INTEGER PRIMARY KEY);"])
    databases = [first, open_db()]
    errors: list[BaseException] = []

    def writer(db: Database) -> None:
        try:
            for _ in range(20):
                with db.transaction() as conn:
                    row = conn.execute("SELECT COALESCE(MAX(x), 0) + 1 FROM a").fetchone()
                    time.sleep(0.001)
                    conn.execute("INSERT INTO a VALUES (?)", (int(row[0]),))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(db,)) for db in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert [row[0] for row in first.query("SELECT x FROM a ORDER BY x")] == list(range(1, 41))


def test_sqlite_wal_mode(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "state.db")
    assert db.journal_mode == "wal"
    db.close()


def _write_then_die(path: str) -> None:
    db = SqliteDatabase(path)
    with db.transaction() as conn:
        conn.execute("INSERT INTO a VALUES (42)")
    os.kill(os.getpid(), signal.SIGKILL)


def test_committed_write_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteDatabase(path).migrate("thing", ["CREATE TABLE a (x INTEGER);"])
    process = multiprocessing.get_context("spawn").Process(target=_write_then_die, args=(str(path),))
    process.start()
    process.join(timeout=30)
    assert process.exitcode == -signal.SIGKILL
    assert [r[0] for r in SqliteDatabase(path).query("SELECT x FROM a")] == [42]


def test_a_new_database_is_owner_only(tmp_path: Path) -> None:
    # Token hashes and endpoint configs live in it: nobody else on the machine may read it.
    db = SqliteDatabase(tmp_path / "state.db")
    try:
        with db.transaction() as conn:
            conn.execute("CREATE TABLE t (x INTEGER)")
        for name in ("state.db", "state.db-wal"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    finally:
        db.close()


def test_open_database_picks_the_engine(tmp_path: Path, postgres_url: str) -> None:
    sqlite = open_database(None, tmp_path / "state.db")
    assert sqlite.dialect == "sqlite" and sqlite.location == str(tmp_path / "state.db")
    sqlite.close()
    shared = open_database(postgres_url, tmp_path / "unused.db")
    assert shared.dialect == "postgresql"
    shared.close()
    assert not (tmp_path / "unused.db").exists()
    with pytest.raises(ValueError, match="must be a postgresql:// URL"):
        open_database("mysql://user:secret@host/db", tmp_path / "state.db")


def test_redact_url() -> None:
    assert redact_url("postgresql://app:s3cret@db:5432/zs") == "postgresql://app:***@db:5432/zs"
    assert redact_url("postgresql://app@db/zs") == "postgresql://app@db/zs"
    assert redact_url("postgresql://db/zs") == "postgresql://db/zs"


@pytest.mark.slow
def test_postgres_down_fails_fast_then_reconnects(postgres: PostgresServer, postgres_url: str) -> None:
    from router.state.postgres import PostgresDatabase

    db = PostgresDatabase(postgres_url, retry_after_s=0.2)
    db.migrate("thing", ["CREATE TABLE a (x INTEGER);"])
    postgres.stop()
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="the database is unreachable") as caught:
            db.query("SELECT x FROM a")
        assert caught.value.status_code == 503
        # Within retry_after_s no new connection is tried.
        with pytest.raises(DatabaseUnavailable), db.transaction() as conn:
            conn.execute("INSERT INTO a VALUES (1)")
        assert time.monotonic() - started < 5
    finally:
        postgres.start()
    time.sleep(0.3)
    with db.transaction() as conn:  # reconnected by itself
        conn.execute("INSERT INTO a VALUES (1)")
    assert [row[0] for row in db.query("SELECT x FROM a")] == [1]
    db.close()
