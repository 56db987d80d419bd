"""``zeroserve replica``: serve one model version in the foreground, without a gateway."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from router.cli import cli

if TYPE_CHECKING:
    from runtime.loaders.base import LoadedModel


def _home() -> Path:
    return Path(os.environ.get("ZEROSERVE_HOME") or "~/.zeroserve").expanduser()


def _curl(port: int, host: str, body: dict[str, Any]) -> str:
    address = f"[{host}]" if ":" in host else host
    return (
        f"curl -s http://{address}:{port}/invocations -H 'Content-Type: application/json' "
        f"-d {shlex.quote(json.dumps(body))}"
    )


@cli.command("replica")
@click.option("--model-uri", help="s3://, file://, models:/, runs:/ or a local path.")
@click.option("--example", is_flag=True, help="Serve the example propensity model (built on first use).")
@click.option("--port", type=int, default=0, show_default=True, help="Port to listen on; 0 picks a free one.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--name", help="Served model name (default: from the URI).")
@click.option("--no-batching", is_flag=True, help="Run every request on its own.")
@click.option("--concurrency", type=int, help="Requests processed at once [env ZEROSERVE_CONCURRENCY, 4].")
@click.option(
    "--optimization",
    type=click.Choice(["auto", "off", "required"]),
    help="Serve MLflow models as verified ONNX conversions [env ZEROSERVE_OPTIMIZATION, auto].",
)
def replica(
    model_uri: str | None,
    example: bool,
    port: int,
    host: str,
    name: str | None,
    no_batching: bool,
    concurrency: int | None,
    optimization: str | None,
) -> None:
    """Serve one model (MLflow scoring at /invocations, Open Inference Protocol at /v2) until Ctrl-C."""
    if bool(model_uri) == example:
        raise click.UsageError("give exactly one of --model-uri and --example")
    from runtime.config import ReplicaSettings
    from runtime.errors import ZeroserveError
    from runtime.examples import propensity_request
    from runtime.ready import optimization_status
    from runtime.server import serve
    from runtime.store import open_model
    from runtime.store.uri import name_from_uri

    overrides: dict[str, Any] = {}
    if no_batching:
        overrides["batching"] = False
    if concurrency is not None:
        overrides["concurrency"] = concurrency
    if optimization is not None:
        overrides["optimization"] = optimization
    try:
        settings = ReplicaSettings(**overrides)
    except Exception as exc:  # pydantic's ValidationError, shown as a usage problem
        raise click.UsageError(f"invalid settings: {exc}") from None

    if example:
        from router.cli.example import ensure_example_model

        click.echo("Preparing the example propensity model (trained locally on first use) ...", err=True)
        model_uri = ensure_example_model(_home()).as_uri()
        name = name or "propensity"
    if model_uri is None:  # unreachable (checked above); narrows the type
        raise click.UsageError("give exactly one of --model-uri and --example")

    def on_loaded(model: LoadedModel) -> None:
        # Which path serves the model (a verified ONNX conversion or the native flavor) and why.
        status = optimization_status(model, settings.optimization)
        click.echo(f"Serving path: {status['path']} ({status['reason']})", err=True)

    def on_ready(bound_port: int) -> None:
        served = name or name_from_uri(model_uri)
        click.echo(f"Serving {served!r} on http://{host}:{bound_port} (Ctrl-C to stop)", err=True)
        if example:
            click.echo("Try it:", err=True)
            click.echo(_curl(bound_port, host, propensity_request(1)))
        sys.stdout.flush()

    try:
        handle = open_model(model_uri)
    except Exception as exc:  # store errors of every kind: report, do not trace back
        raise click.ClickException(f"cannot fetch model {model_uri!r}: {exc}") from None
    try:
        serve(
            handle.path,
            host=host,
            port=port,
            served_name=name or name_from_uri(model_uri),
            settings=settings,
            on_ready=on_ready,
            on_loaded=on_loaded,
        )
    except ZeroserveError as exc:
        raise click.ClickException(f"cannot load model {model_uri!r}: {exc.message}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
    finally:
        handle.close()
