"""What is shared with whom: shares, the tables in them (under a schema name), and their recipients.

A table is a Delta table at a location (an inference table, a batch-scoring output, any Delta table the
gateway can read); a recipient is a principal — someone holding a zeroserve token — allowed to read
every table of the share, and nothing else.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

from router.errors import AlreadyExists, ShareNotFound
from router.state.db import Database
from runtime.errors import InvalidParameterValue, NotFound

MIGRATIONS = [
    """
    CREATE TABLE sharing_shares (
        name TEXT PRIMARY KEY,
        id TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        created_by TEXT
    );
    CREATE TABLE sharing_tables (
        share TEXT NOT NULL,
        schema_name TEXT NOT NULL,
        name TEXT NOT NULL,
        id TEXT NOT NULL,
        location TEXT NOT NULL,
        PRIMARY KEY (share, schema_name, name)
    );
    CREATE TABLE sharing_recipients (
        share TEXT NOT NULL,
        principal TEXT NOT NULL,
        PRIMARY KEY (share, principal)
    );
    """,
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,127}$")


def check_name(kind: str, value: object) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidParameterValue(
            f"{kind} name {value!r} is invalid: use letters, digits, '-' and '_', starting with a letter or "
            "digit, at most 128 characters")
    return value


@dataclass(frozen=True, slots=True)
class Share:
    name: str
    id: str


@dataclass(frozen=True, slots=True)
class SharedTable:
    share: str
    schema: str
    name: str
    id: str
    location: str


class SharingStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        db.migrate("sharing", MIGRATIONS)

    def create_share(self, requested: object, created_by: str | None) -> Share:
        name = check_name("share", requested)
        with self._db.transaction() as conn:
            if conn.execute("SELECT 1 FROM sharing_shares WHERE name = ?", (name,)).fetchone():
                raise AlreadyExists(f"Share '{name}' already exists.")
            share = Share(name, uuid.uuid4().hex)
            conn.execute("INSERT INTO sharing_shares(name, id, created_ms, created_by) VALUES (?, ?, ?, ?)",
                         (name, share.id, int(time.time() * 1000), created_by))
        return share

    def delete_share(self, name: str) -> None:
        self.share(name)
        with self._db.transaction() as conn:
            for table in ("sharing_tables", "sharing_recipients"):
                conn.execute(f"DELETE FROM {table} WHERE share = ?", (name,))
            conn.execute("DELETE FROM sharing_shares WHERE name = ?", (name,))

    def share(self, name: str) -> Share:
        row = self._db.query_one("SELECT name, id FROM sharing_shares WHERE name = ?", (name,))
        if row is None:
            raise ShareNotFound(name)
        return Share(row["name"], row["id"])

    def shares(self) -> list[Share]:
        return [Share(row["name"], row["id"])
                for row in self._db.query("SELECT name, id FROM sharing_shares ORDER BY name")]

    def add_table(self, share: str, schema: object, name: object, location: object) -> SharedTable:
        """``schema``, ``name`` and ``location`` as a request gave them: checked here (400s)."""
        self.share(share)
        schema, name = check_name("schema", schema), check_name("table", name)
        if not isinstance(location, str) or not location:
            raise InvalidParameterValue("location must name a Delta table (a path or an s3:// URI)")
        table = SharedTable(share, schema, name, uuid.uuid4().hex, location)
        with self._db.transaction() as conn:
            if conn.execute("SELECT 1 FROM sharing_tables WHERE share = ? AND schema_name = ? AND name = ?",
                            (share, schema, name)).fetchone():
                raise AlreadyExists(f"Table '{schema}.{name}' is already in share '{share}'.")
            conn.execute("INSERT INTO sharing_tables(share, schema_name, name, id, location)"
                         " VALUES (?, ?, ?, ?, ?)", (share, schema, name, table.id, location))
        return table

    def remove_table(self, share: str, schema: str, name: str) -> None:
        self.table(share, schema, name)
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM sharing_tables WHERE share = ? AND schema_name = ? AND name = ?",
                         (share, schema, name))

    def tables(self, share: str, schema: str | None = None) -> list[SharedTable]:
        rows = self._db.query(
            "SELECT share, schema_name, name, id, location FROM sharing_tables WHERE share = ?"
            + (" AND schema_name = ?" if schema is not None else "") + " ORDER BY schema_name, name",
            (share, schema) if schema is not None else (share,))
        return [SharedTable(row["share"], row["schema_name"], row["name"], row["id"], row["location"])
                for row in rows]

    def table(self, share: str, schema: str, name: str) -> SharedTable:
        for table in self.tables(share, schema):
            if table.name == name:
                return table
        raise NotFound(f"Table '{schema}.{name}' does not exist in share '{share}'.")

    def add_recipient(self, share: str, principal: object) -> None:
        self.share(share)
        if not isinstance(principal, str) or not principal or len(principal) > 256:
            raise InvalidParameterValue("principal must be a non-empty string of at most 256 characters")
        with self._db.transaction() as conn:
            if not conn.execute("SELECT 1 FROM sharing_recipients WHERE share = ? AND principal = ?",
                                (share, principal)).fetchone():
                conn.execute("INSERT INTO sharing_recipients(share, principal) VALUES (?, ?)",
                             (share, principal))

    def remove_recipient(self, share: str, principal: str) -> None:
        self.share(share)
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM sharing_recipients WHERE share = ? AND principal = ?",
                         (share, principal))

    def recipients(self, share: str) -> list[str]:
        return [row["principal"] for row in self._db.query(
            "SELECT principal FROM sharing_recipients WHERE share = ? ORDER BY principal", (share,))]

    def shares_of(self, principal: str) -> set[str]:
        return {row["share"] for row in self._db.query(
            "SELECT share FROM sharing_recipients WHERE principal = ?", (principal,))}
