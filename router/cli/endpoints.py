"""``zeroserve endpoints create|get|list|update|delete``: the serving-endpoints API from a terminal."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import click

from router.cli import cli
from router.cli._client import GatewayClient, gateway_options, load_json_argument, print_json
from router.cli._render import console, endpoints_table, err_console, show_endpoint

API = "/api/2.0/serving-endpoints"


@cli.group()
def endpoints() -> None:
    """Create, inspect, update and delete serving endpoints."""


def _key_values(pairs: tuple[str, ...], what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=what)
        result[key] = value
    return result


def entity_options(command: Any) -> Any:
    """Options describing one served entity (the common case); ``--json``/``--file`` give anything else."""
    options = [
        click.option("--model", "model_uri",
                     help="Model URI (s3://, file://, models:/, runs:/) or registered model name."),
        click.option("--version", "model_version", help="Model version (for registered models)."),
        click.option("--served-name", help="Served entity name [default: {model}-{version}]."),
        click.option("--workload-size",
                     type=click.Choice(["Small", "Medium", "Large"], case_sensitive=False)),
        click.option("--scale-to-zero/--no-scale-to-zero", default=None,
                     help="Allow the entity to scale to zero replicas when idle."),
        click.option("--min-concurrency", type=click.IntRange(min=0),
                     help="Reserved concurrency floor (min_provisioned_concurrency)."),
        click.option("--max-concurrency", type=click.IntRange(min=1),
                     help="Concurrency ceiling (max_provisioned_concurrency)."),
        click.option("--concurrency", type=click.IntRange(min=1),
                     help="Requests one replica takes at once (autoscaling.container_concurrency)."),
        click.option("--env", multiple=True, metavar="KEY=VALUE",
                     help="Environment variable of the replicas."),
        click.option("--optimization", type=click.Choice(["auto", "off", "required"], case_sensitive=False),
                     help="Serve MLflow models as verified ONNX conversions: auto (default), off, or "
                     "required (fail the deployment when the model does not convert)."),
        click.option("--json", "json_text", help="The config (served_entities, traffic_config) as JSON."),
        click.option("--file", "-f", "json_file", help="The config as a JSON file ('-' for stdin)."),
        click.option("--wait/--no-wait", default=True, show_default=True,
                     help="Wait until the config update is done."),
        click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


# The served-entity fields a config update sends back as they are (the API's view adds state and more).
_ENTITY_INPUT_FIELDS = ("entity_name", "entity_version", "name", "workload_size", "workload_type",
                        "scale_to_zero_enabled", "min_provisioned_concurrency", "max_provisioned_concurrency",
                        "environment_vars", "optimization")


def _entity_changes(opts: dict[str, Any]) -> dict[str, Any]:
    """The entity fields the options set (all but --model, --version and --served-name)."""
    entity: dict[str, Any] = {}
    if opts["workload_size"]:
        entity["workload_size"] = opts["workload_size"].capitalize()
    if opts["scale_to_zero"] is not None:
        entity["scale_to_zero_enabled"] = opts["scale_to_zero"]
    if opts["min_concurrency"] is not None:
        entity["min_provisioned_concurrency"] = opts["min_concurrency"]
    if opts["max_concurrency"] is not None:
        entity["max_provisioned_concurrency"] = opts["max_concurrency"]
    if opts["concurrency"] is not None:
        entity["autoscaling"] = {"container_concurrency": opts["concurrency"]}
    if opts["env"]:
        entity["environment_vars"] = _key_values(opts["env"], "--env")
    if opts["optimization"] is not None:
        entity["optimization"] = opts["optimization"].lower()
    return entity


def config_from_current(client: GatewayClient, name: str, opts: dict[str, Any]) -> dict[str, Any]:
    """The endpoint's current config with the options' changes to one served entity (--served-name, or
    the only one): ``update NAME --scale-to-zero`` needs no --model."""
    from autoscaler.spec import AutoscalingSpec, EntitySpec
    from router.api.models import AutoscalingInput

    changes = _entity_changes(opts)
    if not changes:
        raise click.UsageError("nothing to change: give --model, --json/--file, or a setting to change")
    endpoint = client.call("GET", f"{API}/{name}")
    config = endpoint.get("pending_config") or endpoint.get("config") or {}
    entities = config.get("served_entities", [])
    names = [entity["name"] for entity in entities]
    target = opts["served_name"]
    if target is None:
        if len(entities) != 1:
            raise click.UsageError(f"endpoint {name} serves {', '.join(names)}: name one with --served-name")
        target = names[0]
    elif target not in names:
        raise click.UsageError(f"endpoint {name} has no served entity {target} (it has {', '.join(names)})")
    # JSON has lists where the spec has tuples (prewarm): compare them as lists.
    defaults = {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(AutoscalingSpec()).items()}
    # The view shows the replica's start timeout beside the autoscaling settings (EntitySpec's own).
    defaults["start_timeout_s"] = EntitySpec("model", "model").start_timeout_s
    rebuilt = []
    for entity in entities:
        given = {key: entity[key] for key in _ENTITY_INPUT_FIELDS if entity.get(key) is not None}
        # The view shows the effective autoscaling settings: send back only those not at their default.
        autoscaling = {key: value for key, value in (entity.get("autoscaling") or {}).items()
                       if key in AutoscalingInput.model_fields and value != defaults[key]}
        if autoscaling:
            given["autoscaling"] = autoscaling
        if entity["name"] == target:
            autoscaling_change = changes.get("autoscaling", {})
            given.update({key: value for key, value in changes.items() if key != "autoscaling"})
            if autoscaling_change:
                given["autoscaling"] = {**given.get("autoscaling", {}), **autoscaling_change}
        rebuilt.append(given)
    body: dict[str, Any] = {"served_entities": rebuilt}
    if config.get("traffic_config"):
        routes = [{"served_entity_name": route["served_entity_name"],
                   "traffic_percentage": route["traffic_percentage"]}
                  for route in config["traffic_config"].get("routes", [])]
        body["traffic_config"] = {"routes": routes}
    return body


def config_from_options(opts: dict[str, Any]) -> dict[str, Any]:
    if opts["json_text"] is not None or opts["json_file"] is not None:
        if opts["model_uri"]:
            raise click.UsageError("give --model or the whole config with --json/--file, not both")
        config = load_json_argument(opts["json_text"], opts["json_file"], "the config")
        if not isinstance(config, dict):
            raise click.ClickException("the config must be a JSON object")
        return config
    if not opts["model_uri"]:
        raise click.UsageError("give --model (or the whole config with --json/--file)")
    entity: dict[str, Any] = {"entity_name": opts["model_uri"]}
    if opts["model_version"]:
        entity["entity_version"] = opts["model_version"]
    if opts["served_name"]:
        entity["name"] = opts["served_name"]
    entity.update(_entity_changes(opts))
    return {"served_entities": [entity]}


def wait_for_update(client: GatewayClient, name: str, timeout_s: float, quiet: bool) -> dict[str, Any]:
    """Poll until the endpoint's config update is done; a failed update is an error (exit 1)."""
    deadline = time.monotonic() + timeout_s
    status = err_console.status(f"waiting for {name}...") if not quiet else None
    if status is not None:
        status.start()
    try:
        while True:
            endpoint: dict[str, Any] = client.call("GET", f"{API}/{name}")
            state = endpoint.get("state", {})
            update = state.get("config_update")
            if update != "IN_PROGRESS":
                break
            if status is not None:
                status.update(f"waiting for {name}: {_progress(endpoint)}")
            if time.monotonic() > deadline:
                raise click.ClickException(f"{name}: config update still in progress after {timeout_s:g} s")
            time.sleep(0.5)
    finally:
        if status is not None:
            status.stop()
    if update in ("UPDATE_FAILED", "UPDATE_CANCELED"):
        reason = state.get("config_update_message") or "no reason given"
        raise click.ClickException(f"{name}: config update {update}: {reason}")
    return endpoint


def _progress(endpoint: dict[str, Any]) -> str:
    config = endpoint.get("pending_config") or endpoint.get("config") or {}
    parts = []
    for entity in config.get("served_entities", []):
        state = entity.get("state", {})
        deployment = state.get("deployment", "?").removeprefix("DEPLOYMENT_").lower()
        parts.append(f"{entity.get('name')} {deployment}")
    return ", ".join(parts) or "starting"


def _finish(client: GatewayClient, endpoint: dict[str, Any], output: str, wait: bool, timeout: float) -> None:
    if wait:
        endpoint = wait_for_update(client, endpoint["name"], timeout, quiet=output == "json")
    if output == "json":
        print_json(endpoint)
    else:
        show_endpoint(endpoint)


@endpoints.command("create")
@click.argument("name")
@entity_options
@click.option("--tag", multiple=True, metavar="KEY=VALUE", help="Tag of the endpoint.")
@gateway_options
def create(client: GatewayClient, output: str, name: str, tag: tuple[str, ...], **opts: Any) -> None:
    """Create endpoint NAME serving one model (--model) or a whole config (--json/--file)."""
    body: dict[str, Any] = {"name": name, "config": config_from_options(opts)}
    if tag:
        body["tags"] = [{"key": k, "value": v} for k, v in _key_values(tag, "--tag").items()]
    endpoint = client.call("POST", API, body)
    _finish(client, endpoint, output, opts["wait"], opts["timeout"])


@endpoints.command("update")
@click.argument("name")
@entity_options
@gateway_options
def update(client: GatewayClient, output: str, name: str, **opts: Any) -> None:
    """Replace the config of endpoint NAME (zero-downtime rollout). Without --model or --json/--file,
    change settings of its served entity (--served-name when it has several) and keep the rest."""
    if opts["model_uri"] is None and opts["json_text"] is None and opts["json_file"] is None:
        config = config_from_current(client, name, opts)
    else:
        config = config_from_options(opts)
    endpoint = client.call("PUT", f"{API}/{name}/config", config)
    _finish(client, endpoint, output, opts["wait"], opts["timeout"])


@endpoints.command("get")
@click.argument("name")
@gateway_options
def get(client: GatewayClient, output: str, name: str) -> None:
    """Show endpoint NAME: config, pending config, state of every served entity."""
    endpoint = client.call("GET", f"{API}/{name}")
    if output == "json":
        print_json(endpoint)
    else:
        show_endpoint(endpoint)


@endpoints.command("list")
@gateway_options
def list_endpoints(client: GatewayClient, output: str) -> None:
    """List serving endpoints."""
    listed = client.call("GET", API).get("endpoints", [])
    if output == "json":
        print_json(listed)
    elif not listed:
        console.print("no endpoints yet: create one with `zeroserve endpoints create NAME --model URI`")
    else:
        console.print(endpoints_table(listed))


@endpoints.command("delete")
@click.argument("name")
@gateway_options
def delete(client: GatewayClient, output: str, name: str) -> None:
    """Delete endpoint NAME (its replicas drain and stop)."""
    client.call("DELETE", f"{API}/{name}")
    if output == "json":
        print_json({"deleted": name})
    else:
        console.print(f"deleted {name}")
