"""Human output of the CLI (rich), kept apart from the commands so every command shows endpoints alike."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

# Piped into a file or a CI log, rich would lay tables out for 80 columns and squeeze a status table of ten
# columns into ellipses; there is no terminal to fit then, so lay them out wide (COLUMNS still decides).
_PIPE_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200
console = Console(width=_PIPE_WIDTH)
err_console = Console(stderr=True)

_DEPLOYMENT_STYLE = {
    "DEPLOYMENT_READY": "green",
    "DEPLOYMENT_CREATING": "yellow",
    "DEPLOYMENT_RECOVERING": "yellow",
    "DEPLOYMENT_FAILED": "red",
    "DEPLOYMENT_ABORTED": "red",
}


def timestamp(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def endpoint_state(endpoint: dict[str, Any]) -> str:
    state = endpoint.get("state", {})
    ready = state.get("ready", "?")
    update = state.get("config_update", "?")
    colour = "green" if ready == "READY" else "yellow"
    text = f"[{colour}]{ready}[/]"
    if update != "NOT_UPDATING":
        text += f" [{'red' if update == 'UPDATE_FAILED' else 'yellow'}]{update}[/]"
    return text


def show_endpoint(endpoint: dict[str, Any]) -> None:
    config = endpoint.get("config") or {}
    pending = endpoint.get("pending_config")
    console.print(f"[bold]{endpoint['name']}[/]  {endpoint_state(endpoint)}"
                  f"  config version {config.get('config_version', '-')}")
    if endpoint.get("endpoint_url"):
        console.print(f"  url: {endpoint['endpoint_url']}")
    message = endpoint.get("state", {}).get("config_update_message")
    if message:
        console.print(f"  [red]last update failed:[/] {message}")
    if config:
        console.print(entities_table(config, "serving"))
    if pending:
        console.print(entities_table(pending, f"pending (config version {pending.get('config_version')})"))
    tags = endpoint.get("tags") or []
    if tags:
        console.print("  tags: " + ", ".join(f"{t['key']}={t.get('value', '')}" for t in tags))


def entities_table(config: dict[str, Any], title: str) -> Table:
    traffic = {r.get("served_entity_name") or r.get("served_model_name"): r.get("traffic_percentage", 0)
               for r in (config.get("traffic_config") or {}).get("routes", [])}
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("served entity", "model", "traffic", "deployment", "replicas (ready/desired)",
                   "serving path", "message"):
        table.add_column(column)
    for entity in config.get("served_entities", []):
        state = entity.get("state", {})
        deployment = state.get("deployment", "?")
        replicas = state.get("replicas", {})
        version = entity.get("entity_version")
        model = entity.get("entity_name", "?") + (f" v{version}" if version else "")
        table.add_row(
            entity.get("name", "?"),
            model,
            f"{traffic.get(entity.get('name'), 0)}%",
            f"[{_DEPLOYMENT_STYLE.get(deployment, 'white')}]{deployment.removeprefix('DEPLOYMENT_')}[/]",
            f"{replicas.get('ready', 0)}/{replicas.get('desired', 0)}",
            serving_path(entity, detailed=True),
            state.get("deployment_state_message", ""),
        )
    return table


def serving_path(entity: dict[str, Any], *, detailed: bool = False) -> str:
    """How a served entity's replicas run its model (``state.optimization``): ``onnx`` or ``native``,
    with the reason when ``detailed``; the requested mode while no replica has said yet."""
    announced = (entity.get("state") or {}).get("optimization")
    if not isinstance(announced, dict):
        return f"- (optimization {entity.get('optimization', 'auto')})"
    path = str(announced.get("path", "?"))
    if detailed and announced.get("reason"):
        return f"{path}: {announced['reason']}"
    return path


def endpoints_table(endpoints: list[dict[str, Any]]) -> Table:
    table = Table(title=None)
    for column in ("name", "state", "served entities", "created", "creator"):
        table.add_column(column)
    for endpoint in endpoints:
        entities = (endpoint.get("config") or {}).get("served_entities", [])
        table.add_row(
            endpoint["name"],
            endpoint_state(endpoint),
            ", ".join(e.get("name", "?") for e in entities),
            timestamp(endpoint.get("creation_timestamp")),
            endpoint.get("creator") or "-",
        )
    return table
