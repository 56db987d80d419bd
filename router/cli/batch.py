"""``zeroserve batch score ENDPOINT --input PATH --output PATH``: a table scored through an endpoint."""

from __future__ import annotations

import time

import click

from router.cli import cli
from router.cli._client import resolve_token, resolve_url
from router.cli._render import console


@cli.group()
def batch() -> None:
    """Score whole tables through a serving endpoint."""


@batch.command("score")
@click.argument("endpoint")
@click.option("--input", "input_", required=True,
              help="Parquet file or folder, or a Delta table (local or s3://).")
@click.option("--output", required=True,
              help="Where the scores go: a folder of Parquet parts, or a Delta table (local or s3://).")
@click.option("--key", "keys", multiple=True,
              help="An input column copied to the output beside the predictions (repeat for several).")
@click.option("--feature", "features", multiple=True,
              help="An input column the model takes (repeat; default: every column that is not a key).")
@click.option("--format", "output_format", type=click.Choice(["parquet", "delta"]), default=None,
              help="The output's format [default: delta when the input is a Delta table, else parquet].")
@click.option("--batch-rows", type=int, default=1000, show_default=True, help="Rows per request.")
@click.option("--protocol", type=click.Choice(["auto", "json", "v2-binary"]), default="auto",
              show_default=True,
              help="auto: Open Inference Protocol binary tensors when the features are numbers, else JSON.")
@click.option("--part-rows", type=int, default=50_000, show_default=True,
              help="Rows per part of the output: what lands at once, and what an interruption redoes.")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Requests in flight.")
@click.option("--max-retries", type=int, default=8, show_default=True,
              help="Retries of one batch on 429/502/503/504 or a lost connection, with back-off.")
@click.option("--url", envvar="ZEROSERVE_URL", default=None,
              help="Gateway URL [env ZEROSERVE_URL; default: the local gateway of ZEROSERVE_HOME].")
@click.option("--token", envvar="ZEROSERVE_TOKEN", default=None, help="Bearer token [env ZEROSERVE_TOKEN].")
def score(endpoint: str, input_: str, output: str, keys: tuple[str, ...], features: tuple[str, ...],
          output_format: str | None, batch_rows: int, protocol: str, part_rows: int, concurrency: int,
          max_retries: int, url: str | None, token: str | None) -> None:
    """Send every row of the input through ENDPOINT; write its keys and predictions to the output.

    Interrupted, the same command resumes: batches already written are skipped, none is scored twice."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from router.batch import BatchJob, BatchScoringError
    from router.batch import score as run

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.fields[count]}"),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), console=console, transient=False) as progress:
        task = progress.add_task(endpoint, total=None, rate="", count="")
        started = [0.0, 0]

        def advance(done: int, total: int) -> None:
            now = time.monotonic()
            if not started[0]:
                started[0], started[1] = now, done
            elapsed = now - started[0]
            rate = f"{(done - started[1]) / elapsed:,.0f} rows/s" if elapsed > 0 else ""
            progress.update(task, completed=done, total=total, rate=rate, count=f"{done:,}/{total:,} rows")

        job = BatchJob(endpoint=endpoint, input=input_, output=output, url=resolve_url(url),
                       token=resolve_token(token), key=keys, features=features or None,
                       batch_rows=batch_rows, part_rows=part_rows, concurrency=concurrency,
                       max_retries=max_retries, protocol=protocol,
                       output_format=output_format, on_progress=advance)
        try:
            result = run(job)
        except BatchScoringError as error:
            raise click.ClickException(str(error)) from None
    resumed = f", {result.skipped:,} already there (resumed)" if result.skipped else ""
    console.print(f"scored {result.scored:,} of {result.rows:,} rows in {result.seconds:.1f} s "
                  f"({result.rows_per_s:,.0f} rows/s, {result.retries} retries){resumed} -> {result.output}")
