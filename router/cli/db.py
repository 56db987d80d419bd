"""``zeroserve db migrate`` and ``zeroserve db copy``: the control-plane database from a terminal,
without a gateway running (a gateway also migrates by itself when it starts)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from router.cli import cli
from router.cli._render import console, err_console

if TYPE_CHECKING:
    from router.state.db import Database


def _database_options(command: click.decorators.FC) -> click.decorators.FC:
    command = click.option("--home", default=None,
                           help="The SQLite home [env ZEROSERVE_HOME, ~/.zeroserve].")(command)
    return click.option("--database-url", default=None,
                        help="A postgresql:// URL [env ZEROSERVE_DATABASE_URL; unset: the home's SQLite"
                             " database].")(command)


def _open(database_url: str | None, home: str | None) -> Database:
    from router.settings import GatewaySettings
    from router.state.db import DatabaseUnavailable, open_database

    overrides: dict[str, object] = {}
    if home is not None:
        overrides["home"] = Path(home).expanduser()
    if database_url is not None:
        overrides["database_url"] = database_url
    settings = GatewaySettings(**overrides)  # type: ignore[arg-type]
    if settings.database_url is None:
        settings.ensure_home()
    try:
        return open_database(settings.database_url, settings.db_path)
    except (DatabaseUnavailable, ValueError) as error:
        raise click.ClickException(str(error)) from None


@cli.group()
def db() -> None:
    """The control-plane database: upgrade its schema, move a SQLite home to PostgreSQL."""


@db.command("migrate")
@_database_options
def migrate(database_url: str | None, home: str | None) -> None:
    """Upgrade the database's schema to this release (what a gateway does when it starts)."""
    from router.state.schema import migrate_all

    database = _open(database_url, home)
    try:
        changes = migrate_all(database)
    except RuntimeError as error:  # a schema newer than this release
        raise click.ClickException(str(error)) from None
    finally:
        database.close()
    for component, (before, after) in changes.items():
        done = f"upgraded from version {before} to {after}" if before != after else f"at version {after}"
        console.print(f"{component}: {done}", highlight=False)
    err_console.print(f"Database {database.location} is at this release's schema.", highlight=False)


@db.command("copy")
@click.option("--to", "target_url", required=True, help="The empty PostgreSQL database to copy into.")
@click.option("--home", default=None, help="The SQLite home to copy [env ZEROSERVE_HOME, ~/.zeroserve].")
def copy(target_url: str, home: str | None) -> None:
    """Copy a SQLite home's endpoints, tokens, permissions and audit log into PostgreSQL.

    Stop the gateway first; afterwards start every gateway with ZEROSERVE_DATABASE_URL set to the same
    URL. Tokens keep working (their hashes move), endpoint ids and config versions are kept.
    """
    from router.state.db import DatabaseUnavailable
    from router.state.schema import copy_all

    if not target_url.startswith(("postgresql://", "postgres://")):
        raise click.BadParameter("must be a postgresql:// URL", param_hint="--to")
    source = _open(None, home)
    target = _open(target_url, home)
    try:
        copied = copy_all(source, target)
    except (ValueError, RuntimeError, DatabaseUnavailable) as error:
        raise click.ClickException(str(error)) from None
    finally:
        source.close()
        target.close()
    for table, rows in copied.items():
        console.print(f"{table}: {rows} rows", highlight=False)
    err_console.print(f"Copied {source.location} into {target.location}. Start the gateways with"
                      f" ZEROSERVE_DATABASE_URL={target.location}", highlight=False)
