"""Every component's tables in one list: what ``zeroserve db migrate`` upgrades and what ``zeroserve db
copy`` moves from a SQLite home to PostgreSQL. Each store still migrates its own tables when it opens
(a gateway meets an older schema and upgrades it in place); this list is for doing it ahead, from a
terminal, and for knowing which tables hold the durable state.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.auth import audit, permissions, tokens
from router.state import endpoints
from router.state.db import Database, MigrationSteps


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    steps: MigrationSteps
    # Its tables, parents before children (foreign keys): the order rows are copied in.
    tables: tuple[str, ...]


COMPONENTS = (
    Component("endpoints", endpoints.MIGRATIONS, ("endpoints", "endpoint_configs", "endpoint_events")),
    Component("auth_tokens", tokens.MIGRATIONS, ("auth_tokens",)),
    Component("auth_permissions", permissions.MIGRATIONS, ("auth_endpoint_acl",)),
    Component("audit", audit.MIGRATIONS, ("audit",)),
)
# Columns filled from a sequence on PostgreSQL: after a copy the sequence must start past the rows.
_GENERATED = {"endpoint_events": "seq", "audit": "id"}


def migrate_all(db: Database) -> dict[str, tuple[int, int]]:
    """Bring every component's tables to this release's schema; ``{component: (before, after)}``."""
    changes = {}
    for component in COMPONENTS:
        before = db.schema_version(component.name)
        changes[component.name] = (before, db.migrate(component.name, component.steps))
    return changes


def copy_all(source: Database, target: Database) -> dict[str, int]:
    """Copy every durable row from ``source`` to ``target`` (both migrated to this release first);
    ``{table: rows}``. The target must hold no rows yet: a copy never merges two states."""
    migrate_all(source)
    migrate_all(target)
    for component in COMPONENTS:
        for table in component.tables:
            if target.query_one(f"SELECT 1 FROM {table} LIMIT 1") is not None:
                raise ValueError(
                    f"the target database already has rows in {table}: copy into an empty database"
                )
    copied: dict[str, int] = {}
    # One transaction: a failed copy leaves the target empty, ready for another try.
    with target.transaction() as conn:
        for component in COMPONENTS:
            for table in component.tables:
                rows = source.query(f"SELECT * FROM {table}")
                copied[table] = len(rows)
                if not rows:
                    continue
                columns = list(rows[0].keys())
                conn.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                    [tuple(row[column] for column in columns) for row in rows],
                )
        if target.dialect == "postgresql":
            for table, column in _GENERATED.items():
                conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                    f" COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
                )
    return copied
