"""``zeroserve models pull URI`` and ``zeroserve cache ls | prune``: the local model cache."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from router.cli import cli


def _settings(cache_dir: Path | None) -> Any:
    from runtime.store import StoreSettings

    return StoreSettings(cache_dir=cache_dir) if cache_dir else StoreSettings()


_cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache directory [default: $ZEROSERVE_CACHE_DIR or ~/.zeroserve/cache].",
)


def _size(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class _RichProgress:
    """Feeds fetch progress into a rich progress bar."""

    def __init__(self, progress: Any, uri: str) -> None:
        self._progress = progress
        self._task = progress.add_task(uri, total=None)

    def start(self, total_bytes: int) -> None:
        self._progress.update(self._task, total=total_bytes)

    def advance(self, nbytes: int) -> None:
        self._progress.advance(self._task, nbytes)


@cli.group()
def models() -> None:
    """Fetch models into the local cache."""


@models.command("pull")
@click.argument("uri")
@_cache_dir_option
def pull(uri: str, cache_dir: Path | None) -> None:
    """Download URI (s3://, file://, models:/, runs:/) into the cache, or confirm it is there."""
    import time

    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from router.cli._render import console
    from runtime.errors import ZeroserveError
    from runtime.store import open_model

    started = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            handle = open_model(uri, _settings(cache_dir), progress=_RichProgress(bar, uri))
    except ZeroserveError as exc:
        raise click.ClickException(exc.message) from exc
    with handle:
        size = handle.manifest.total_bytes if handle.manifest else 0
        how = "already cached" if handle.from_cache else "fetched"
        console.print(f"{how} [bold]{uri}[/] ({_size(size)}) in {time.monotonic() - started:.2f}s")
        console.print(f"version {handle.version_key}")
        console.print(f"path    {handle.path}")


@cli.group()
def cache() -> None:
    """Inspect and prune the local model cache."""


@cache.command("ls")
@_cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def cache_ls(cache_dir: Path | None, as_json: bool) -> None:
    """List cached model versions, most recently used first."""
    from rich.table import Table

    from router.cli._render import console
    from runtime.store.inventory import cache_bytes, list_cached

    settings = _settings(cache_dir)
    versions = list_cached(settings)
    if as_json:
        click.echo(json.dumps([asdict(v) for v in versions], indent=2))
        return
    table = Table("version", "uri", "files", "size", "last used", "pinned")
    for version in versions:
        used = datetime.fromtimestamp(version.last_used).strftime("%Y-%m-%d %H:%M:%S")
        pinned = "[green]yes[/]" if version.pinned else "no"
        table.add_row(
            version.version_key[:12], version.uri, str(version.files), _size(version.bytes), used, pinned
        )
    console.print(table)
    budget = settings.cache_max_bytes
    console.print(
        f"{len(versions)} version(s), {_size(cache_bytes(settings))} on disk, budget {_size(budget)}"
    )


@cache.command("prune")
@_cache_dir_option
@click.option(
    "--max-bytes", type=click.IntRange(min=0), help="Evict down to this size [default: the budget]."
)
@click.option("--all", "everything", is_flag=True, help="Evict every version no running process uses.")
def cache_prune(cache_dir: Path | None, max_bytes: int | None, everything: bool) -> None:
    """Evict least-recently-used versions that no running replica has open."""
    from router.cli._render import console
    from runtime.store.inventory import prune

    result = prune(_settings(cache_dir), max_bytes=max_bytes, everything=everything)
    sizes = f"{_size(result.bytes_before)} -> {_size(result.bytes_after)}"
    console.print(f"evicted {len(result.evicted)} version(s): {sizes}")
    if result.stale_temp_removed:
        console.print(f"removed {result.stale_temp_removed} leftover(s) of interrupted downloads")
