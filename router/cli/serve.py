"""``zeroserve serve``, ``up``, ``status``, ``invoke`` and ``logs``: run a gateway and look at it."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from router.cli import cli
from router.cli._client import GatewayClient, gateway_options, load_json_argument, print_json
from router.cli._render import console, endpoint_state, err_console, serving_path, timestamp
from router.cli.endpoints import API

EXAMPLE_ENDPOINT = "propensity"


def _settings(options: dict[str, Any]) -> tuple[Any, Any]:
    """Gateway and security settings: the environment (``ZEROSERVE_*``), overridden by the options."""
    import os

    from router.auth.settings import SecuritySettings
    from router.settings import GatewaySettings

    gateway: dict[str, Any] = {k: options[k] for k in ("host", "port") if options[k] is not None}
    if options["home"] is not None:
        gateway["home"] = Path(options["home"]).expanduser()
        # The model cache and the replicas follow ZEROSERVE_HOME too: one setting moves everything.
        os.environ["ZEROSERVE_HOME"] = str(gateway["home"])
    security: dict[str, Any] = {}
    if options["insecure_no_auth"]:
        security["insecure_no_auth"] = True
    for key in ("ssl_certfile", "ssl_keyfile"):
        if options[key] is not None:
            security[key] = Path(options[key])
    try:
        return GatewaySettings(**gateway), SecuritySettings(**security)
    except Exception as exc:  # pydantic's ValidationError: a usage problem, not a traceback
        raise click.ClickException(f"invalid gateway settings: {exc}") from None


def _server_options(command: Any) -> Any:
    options = [
        click.option("--host", default=None, help="Address to listen on [env ZEROSERVE_HOST, 127.0.0.1]."),
        click.option("--port", type=click.IntRange(0, 65535), default=None,
                     help="Port [env ZEROSERVE_PORT, 8484; 0 picks a free one]."),
        click.option("--home", default=None, help="State directory [env ZEROSERVE_HOME, ~/.zeroserve]."),
        click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Serve HTTPS with this certificate (PEM) [env ZEROSERVE_SSL_CERTFILE]."),
        click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="The certificate's private key (PEM) [env ZEROSERVE_SSL_KEYFILE]."),
        click.option("--insecure-no-auth", is_flag=True, default=False,
                     help="Local development only: no tokens at all; binds to loopback only."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run(options: dict[str, Any], hooks: list[Any]) -> None:
    from router.gateway import serve

    settings, security = _settings(options)
    try:
        serve(settings, security=security, on_ready=[*hooks])
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("serve")
@_server_options
def serve_command(**options: Any) -> None:
    """Run the gateway: control-plane API, data plane, autoscaler and local replicas, in one process."""
    _run(options, [_print_ready])


@cli.command("up")
@_server_options
@click.option("--example", is_flag=True, help="Also deploy the example endpoint (a propensity model).")
def up(example: bool, **options: Any) -> None:
    """Start the gateway in the foreground (Ctrl-C stops it); with --example, deploy an example model."""
    if example:
        import os

        # The example is served through mlflow.pyfunc (scikit-learn inside): a warm pool that has those
        # imported starts its replica from zero in a fraction of a second instead of seconds (~250 MB a
        # pool worker). An explicit setting wins.
        os.environ.setdefault("ZEROSERVE_WARM_POOL_PRELOAD", "onnx,sklearn")
    # _print_ready first: a generated admin token is shown only this once.
    _run(options, [_print_ready, _deploy_example] if example else [_print_ready])


async def _print_ready(gateway: Any) -> None:
    console.print(f"[bold green]zeroserve is up[/] at {gateway.url}  (state in {gateway.settings.home})")
    if gateway.admin_token:
        # soft_wrap: never break a token across lines (rich wraps at 80 columns when not on a terminal).
        console.print(f"admin token (shown once, keep it): [bold]{gateway.admin_token}[/]", soft_wrap=True)
        console.print(f"  export ZEROSERVE_TOKEN={gateway.admin_token}", highlight=False, soft_wrap=True)


async def _deploy_example(gateway: Any) -> None:
    # In the background: the HTTP server starts accepting only after start-up hooks return.
    task = asyncio.create_task(_example(gateway), name="deploy example")
    gateway.background = task  # keep a reference for the life of the gateway


async def _example(gateway: Any) -> None:
    from router.cli.example import deploy_example

    try:
        lines = await deploy_example(gateway)
    except Exception as exc:
        err_console.print(f"[red]could not deploy the example endpoint:[/] {exc}")
        return
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


@cli.command("status")
@gateway_options
def status(client: GatewayClient, output: str) -> None:
    """A table of endpoints, their served entities, replicas and recent scaling reasons."""
    listed = client.call("GET", API).get("endpoints", [])
    details = [client.call("GET", f"{API}/{e['name']}") for e in listed]
    if output == "json":
        print_json(details)
        return
    if not details:
        console.print(f"gateway {client.url}: no endpoints yet")
        return
    from rich.table import Table

    table = Table(title=f"gateway {client.url}", title_justify="left")
    for column in ("endpoint", "state", "served entity", "traffic", "deployment", "replicas", "serving path",
                   "cost so far", "per 1k inferences", "last scaling"):
        table.add_column(column)
    for endpoint in details:
        config = endpoint.get("config") or endpoint.get("pending_config") or {}
        traffic = {r.get("served_entity_name"): r.get("traffic_percentage")
                   for r in (config.get("traffic_config") or {}).get("routes", [])}
        first = True
        for entity in config.get("served_entities", []) or [{}]:
            state = entity.get("state", {})
            replicas = state.get("replicas", {})
            scaling = state.get("scaling") or []
            table.add_row(
                endpoint["name"] if first else "",
                endpoint_state(endpoint) if first else "",
                entity.get("name", "-"),
                f"{traffic.get(entity.get('name'), 0)}%" if entity else "",
                state.get("deployment", "-").removeprefix("DEPLOYMENT_"),
                _replicas(replicas),
                serving_path(entity) if entity else "",
                *_cost_cells(state.get("cost")),
                scaling[-1]["reason"] if scaling else "-",
            )
            first = False
    console.print(table)
    _print_fleet(client)


def _print_fleet(client: GatewayClient) -> None:
    """The gateways sharing the state and which one leads, when there are several (admin only)."""
    from router.cli._client import GatewayError

    try:
        fleet = client.call("GET", "/api/2.0/zeroserve/fleet")
    except GatewayError:
        return  # not an admin: the endpoints are all this caller may see
    accelerators = fleet.get("accelerators") or {}
    if accelerators:
        gpus = accelerators.get("gpus")
        console.print(f"accelerators: {accelerators.get('where', '-')}"
                      + ("" if gpus else "; GPU workload types are refused" if gpus == 0 else ""))
    if not fleet.get("shared_state"):
        return
    from rich.table import Table

    leader = fleet.get("leader") or {}
    title = f"gateways sharing {fleet.get('database')}: "
    if leader:
        title += f"{leader.get('gateway_id')} leads since {timestamp(leader.get('since'))}"
    else:
        title += f"none leads right now (a new leader within {fleet.get('lease_seconds')} s)"
    table = Table(title=title, title_justify="left")
    for column in ("gateway", "url", "host", "pid", "started", "last seen", "role"):
        table.add_column(column)
    for gateway in fleet.get("gateways", []):
        role = "leader" if gateway.get("leader") else ("follower" if gateway.get("live") else "not answering")
        table.add_row(gateway["gateway_id"] + (" (this one)" if gateway.get("this") else ""), gateway["url"],
                      gateway["host"], str(gateway["pid"]), timestamp(gateway["started"]),
                      timestamp(gateway["last_seen"]), role)
    console.print(table)


def _replicas(replicas: dict[str, int]) -> str:
    if not replicas:
        return "-"
    text = f"{replicas.get('ready', 0)} ready / {replicas.get('desired', 0)} desired"
    for state in ("starting", "draining"):
        if replicas.get(state):
            text += f", {replicas[state]} {state}"
    return text


@cli.command("invoke")
@click.argument("name")
@click.option("--json", "json_text", help="Request body, e.g. '{\"dataframe_records\": [...]}'.")
@click.option("--file", "-f", "json_file", help="Request body from a JSON file ('-' for stdin).")
@click.option("--csv", "csv_file", help="Send a CSV file (text/csv) instead of JSON.")
@gateway_options
def invoke(client: GatewayClient, output: str, name: str, json_text: str | None, json_file: str | None,
           csv_file: str | None) -> None:
    """Query endpoint NAME (MLflow scoring protocol) and print the predictions."""
    path = f"/serving-endpoints/{name}/invocations"
    if csv_file is not None:
        if json_text is not None or json_file is not None:
            raise click.UsageError("give --csv or a JSON body, not both")
        try:
            content = click.open_file(csv_file, "rb").read()
        except OSError as exc:
            raise click.ClickException(f"cannot read {csv_file}: {exc.strerror}") from None
        response = client.request("POST", path, content=content, headers={"Content-Type": "text/csv"})
    else:
        body = load_json_argument(json_text, json_file, "the request body")
        response = client.request("POST", path, json=body)
    served = response.headers.get("served-model-name", "")
    try:
        answer = response.json()
    except ValueError:
        raise click.ClickException("the endpoint answered with something that is not JSON") from None
    if output == "json":
        print_json(answer)
        return
    err_console.print(f"served by [bold]{served}[/]")
    click.echo(json.dumps(answer))


@cli.command("logs")
@click.argument("name")
@click.argument("served", required=False)
@click.option("--build", is_flag=True, help="Show how the replicas were brought up instead.")
@gateway_options
def logs(client: GatewayClient, output: str, name: str, served: str | None, build: bool) -> None:
    """Logs of endpoint NAME's served entity SERVED (default: every served entity)."""
    if served is None:
        endpoint = client.call("GET", f"{API}/{name}")
        config = endpoint.get("config") or endpoint.get("pending_config") or {}
        names = [e["name"] for e in config.get("served_entities", [])]
    else:
        names = [served]
    kind = "build-logs" if build else "logs"
    collected = {
        n: client.call("GET", f"{API}/{name}/served-models/{n}/{kind}").get("logs", "") for n in names
    }
    if output == "json":
        print_json(collected)
        return
    for entity, text in collected.items():
        if len(collected) > 1:
            console.print(f"[bold]== {entity} ==[/]")
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")


def curl_command(url: str, name: str, body: dict[str, Any], token: str | None) -> str:
    parts = ["curl", "-s", f"{url}/serving-endpoints/{name}/invocations"]
    parts += ["-H", "Content-Type: application/json"]
    if token:
        parts += ["-H", f"Authorization: Bearer {token}"]
    parts += ["-d", json.dumps(body)]
    return " ".join(shlex.quote(part) for part in parts)


def _cost_cells(cost: dict[str, Any] | None) -> tuple[str, str]:
    """Cost so far with the current hourly rate (an idle scaled-to-zero entity: 0/h), and per 1k."""
    if not cost:
        return "-", "-"
    currency = cost.get("currency", "")
    spent = f"{cost['total']:.4f} {currency} ({cost['hourly_rate']:.2f}/h)"
    per_1k = cost.get("per_1k_inferences")
    return spent, (f"{per_1k:.4f} {currency}" if per_1k is not None else "-")
