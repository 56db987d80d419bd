from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from router.db import Database


def test_wal_mode_and_migrations_apply_once(tmp_path: Path) -> None:
    db = Database(tmp_path / "state.db")
    assert db.journal_mode == "wal"
    steps = ["CREATE TABLE a (x INTEGER);", "CREATE TABLE b (y TEXT); INSERT INTO b VALUES ('one');"]
    assert db.migrate("thing", steps) == 2
    assert db.migrate("thing", steps) == 2  # applied once: a second run would fail on CREATE TABLE
    assert db.schema_version("thing") == 2
    assert db.schema_version("other") == 0
    # A later release appends a step; only it runs.
    assert db.migrate("thing", [*steps, "ALTER TABLE a ADD COLUMN z TEXT;"]) == 3
    assert [r[0] for r in db.query("SELECT y FROM b")] == ["one"]
    db.close()


def test_schema_newer_than_code_is_refused(tmp_path: Path) -> None:
    db = Database(tmp_path / "state.db")
    db.migrate("thing", ["CREATE TABLE a (x INTEGER);", "CREATE TABLE b (x INTEGER);"])
    with pytest.raises(RuntimeError, match="newer than this code"):
        db.migrate("thing", ["CREATE TABLE a (x INTEGER);"])


def test_failed_migration_step_rolls_back_whole_step(tmp_path: Path) -> None:
    db = Database(tmp_path / "state.db")
    with pytest.raises(Exception, match="no such table"):
        db.migrate("thing", ["CREATE TABLE a (x INTEGER); INSERT INTO missing VALUES (1);"])
    assert db.schema_version("thing") == 0
    assert db.query("SELECT name FROM sqlite_master WHERE name = 'a'") == []


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    db = Database(tmp_path / "state.db")
    db.migrate("thing", ["CREATE TABLE a (x INTEGER);"])
    with pytest.raises(ValueError), db.transaction() as conn:
        conn.execute("INSERT INTO a VALUES (1)")
        raise ValueError("boom")
    assert db.query("SELECT x FROM a") == []


def _write_then_die(path: str) -> None:
    db = Database(path)
    with db.transaction() as conn:
        conn.execute("INSERT INTO a VALUES (42)")
    os.kill(os.getpid(), signal.SIGKILL)


def test_committed_write_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Database(path).migrate("thing", ["CREATE TABLE a (x INTEGER);"])
    process = multiprocessing.get_context("spawn").Process(target=_write_then_die, args=(str(path),))
    process.start()
    process.join(timeout=30)
    assert process.exitcode == -signal.SIGKILL
    assert [r[0] for r in Database(path).query("SELECT x FROM a")] == [42]


def test_a_new_database_is_owner_only(tmp_path: Path) -> None:
    # Token hashes and endpoint configs live in it: nobody else on the machine may read it.
    db = Database(tmp_path / "state.db")
    try:
        with db.transaction() as conn:
            conn.execute("CREATE TABLE t (x INTEGER)")
        for name in ("state.db", "state.db-wal"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    finally:
        db.close()
