"""``zeroserve db migrate`` and ``zeroserve db copy`` (a SQLite home moved to a real PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from router.auth.audit import AuditLog, AuditRecord
from router.auth.permissions import AclEntry, PermissionStore
from router.auth.tokens import TokenStore
from router.auth.types import PermissionLevel
from router.cli import _register, cli
from router.state.db import SqliteDatabase
from router.state.endpoints import EndpointStore
from router.state.postgres import PostgresDatabase
from tests.router.state.test_endpoints import make_config


def run(*args: str) -> Result:
    _register()
    return CliRunner().invoke(cli, list(args))


def test_migrate_reports_each_component(tmp_path: Path) -> None:
    first = run("db", "migrate", "--home", str(tmp_path / "home"))
    assert first.exit_code == 0, first.output
    assert "endpoints: upgraded from version 0 to 1" in first.output
    again = run("db", "migrate", "--home", str(tmp_path / "home"))
    assert again.exit_code == 0 and "auth_tokens: at version 1" in again.output


def test_migrate_refuses_a_newer_schema(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "home" / "state.db")
    db.migrate("endpoints", ["CREATE TABLE a (x INTEGER);", "CREATE TABLE b (x INTEGER);"])
    db.close()
    result = run("db", "migrate", "--home", str(tmp_path / "home"))
    assert result.exit_code == 1 and "newer than this code knows" in result.output


def test_an_unreachable_database_is_a_message(tmp_path: Path) -> None:
    result = run("db", "migrate", "--database-url", "postgresql://nobody:pw@127.0.0.1:1/none")
    assert result.exit_code == 1
    assert "the database is unreachable" in result.output and "pw" not in result.output


def test_copy_a_sqlite_home_to_postgres(tmp_path: Path, postgres_url: str) -> None:
    home = tmp_path / "home"
    source = SqliteDatabase(home / "state.db")
    endpoints = EndpointStore(source)
    endpoints.create("fraud", make_config("1"), creator="alice")
    endpoints.finish_update("fraud", 1)
    endpoints.submit_config("fraud", make_config("2"))
    tokens = TokenStore(source)
    token, info = tokens.create("svc", groups=["ml"])
    record = endpoints.get("fraud")
    PermissionStore(source).replace(record.id, [AclEntry("group_name", "ml", PermissionLevel.CAN_QUERY)])
    AuditLog(source).record(AuditRecord(1, "alice", None, "POST", "/api/2.0/x", 200, None, {}))
    source.close()

    copied = run("db", "copy", "--to", postgres_url, "--home", str(home))
    assert copied.exit_code == 0, copied.output
    assert "endpoint_configs: 2 rows" in copied.output and "auth_tokens: 1 rows" in copied.output

    target = PostgresDatabase(postgres_url)
    moved = EndpointStore(target)
    same = moved.get("fraud")
    assert same.id == record.id and same.config is not None and same.config.version == 1
    assert same.pending is not None and same.pending.version == 2
    principal = TokenStore(target).authenticate(token)  # the hash moved: the token keeps working
    assert principal is not None and principal.name == "svc" and principal.token_id == info.token_id
    assert [e.level for e in PermissionStore(target).entries(record.id)] == [PermissionLevel.CAN_QUERY]
    # Generated keys continue past the copied rows.
    moved.record_event("fraud", "NOTE", "after the move")
    assert [e.kind for e in moved.history("fraud")][-1] == "NOTE"
    AuditLog(target).record(AuditRecord(2, "bob", None, "DELETE", "/x", 200, None, {}))
    assert [r.principal for r in AuditLog(target).list()] == ["bob", "alice"]
    target.close()

    again = run("db", "copy", "--to", postgres_url, "--home", str(home))
    assert again.exit_code == 1 and "already has rows" in again.output
