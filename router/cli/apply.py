"""``zeroserve apply -f endpoints.yaml``: make the gateway's endpoints match a file, declaratively.

For each endpoint in the file: create it if missing, update its config if what the file asks for
differs from what the gateway runs (or is rolling out), patch its tags; print what changed. Applying the
same file twice changes nothing the second time. Endpoints not in the file are left alone.

The file holds ``endpoints:`` (a list), a bare list, or a single endpoint; each endpoint is the body of a
create request: ``name``, ``config`` (``served_entities``, ``traffic_config``) and optional ``tags``
(a mapping or a list of ``{key, value}``).
"""

from __future__ import annotations

from typing import Any

import click
import yaml

from router.api.models import EndpointConfig, EndpointCoreConfigInput, normalize_config, parse_body
from router.api.views import autoscaling_view
from router.cli import cli
from router.cli._client import GatewayClient, GatewayError, gateway_options, print_json
from router.cli._render import console
from router.cli.endpoints import API, wait_for_update
from runtime.errors import InvalidParameterValue


def load_endpoints(path: str) -> list[dict[str, Any]]:
    try:
        with click.open_file(path) as handle:
            document = yaml.safe_load(handle)
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{path} is not valid YAML: {exc}") from None
    if isinstance(document, dict) and "endpoints" in document:
        document = document["endpoints"]
    elif isinstance(document, dict):
        document = [document]
    if not isinstance(document, list) or not all(isinstance(item, dict) for item in document):
        raise click.ClickException(f"{path}: expected a list of endpoints (mappings with name and config)")
    names = [item.get("name") for item in document]
    for index, item in enumerate(document):
        if not isinstance(item.get("name"), str) or not isinstance(item.get("config"), dict):
            raise click.ClickException(f"{path}: endpoint #{index + 1} needs a name and a config mapping")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise click.ClickException(f"{path}: endpoint(s) listed twice: {', '.join(map(str, duplicates))}")
    return document


_TAGS_RULE = "tags must be a mapping or a list of {key, value}"


def _tag_list(tags: dict[str, str | None]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} if v is not None else {"key": k} for k, v in tags.items()]


def desired_tags(item: dict[str, Any]) -> dict[str, str | None]:
    tags = item.get("tags") or {}
    if isinstance(tags, dict):
        return {str(k): (None if v is None else str(v)) for k, v in tags.items()}
    if isinstance(tags, list):
        result: dict[str, str | None] = {}
        for tag in tags:
            if not isinstance(tag, dict) or "key" not in tag:
                raise click.ClickException(f"{item['name']}: {_TAGS_RULE}")
            result[str(tag["key"])] = None if tag.get("value") is None else str(tag["value"])
        return result
    raise click.ClickException(f"{item['name']}: {_TAGS_RULE}")


def _keep_name(entity_name: str, version: str | None, where: str) -> str:
    # The client does not resolve registry names (the gateway does); comparing the names is enough.
    return entity_name


def config_projection(config: EndpointConfig) -> dict[str, Any]:
    """What decides whether two configs are the same deployment."""
    return {
        "entities": sorted(
            (
                {
                    "name": e.name,
                    "entity_name": e.entity_name,
                    "entity_version": e.entity_version,
                    "workload_size": e.workload_size,
                    "workload_type": e.workload_type,
                    "scale_to_zero_enabled": e.scale_to_zero_enabled,
                    "min_provisioned_concurrency": e.min_provisioned_concurrency,
                    "max_provisioned_concurrency": e.max_provisioned_concurrency,
                    "environment_vars": dict(e.environment_vars),
                    "autoscaling": autoscaling_view(e),
                }
                for e in config.served_entities
            ),
            key=lambda entity: str(entity["name"]),
        ),
        "routes": sorted((r.served_entity_name, r.traffic_percentage) for r in config.routes),
    }


def _normalized(raw: dict[str, Any], where: str) -> EndpointConfig:
    try:
        return normalize_config(parse_body(EndpointCoreConfigInput, raw, where), where, resolve=_keep_name)
    except InvalidParameterValue as exc:
        raise click.ClickException(exc.message) from None


def _current_config(endpoint: dict[str, Any]) -> dict[str, Any] | None:
    current = endpoint.get("pending_config") or endpoint.get("config")
    if not current:
        return None
    return {
        "served_entities": current.get("served_entities", []),
        "traffic_config": current.get("traffic_config"),
    }


def plan(item: dict[str, Any], endpoint: dict[str, Any] | None) -> tuple[str, bool, dict[str, Any]]:
    """(action, config changed, tag patch) for one endpoint of the file against the gateway."""
    name = item["name"]
    tags = desired_tags(item)
    if endpoint is None:
        return "create", True, {}
    wanted = config_projection(_normalized(item["config"], f"{name}.config"))
    current_raw = _current_config(endpoint)
    changed = current_raw is None or config_projection(_normalized(current_raw, name)) != wanted
    current_tags = {t["key"]: t.get("value") for t in endpoint.get("tags", [])}
    patch: dict[str, Any] = {}
    add = _tag_list({k: v for k, v in tags.items() if current_tags.get(k, ...) != v})
    remove = sorted(k for k in current_tags if k not in tags)
    if add:
        patch["add_tags"] = add
    if remove:
        patch["delete_tags"] = remove
    action = "update" if changed or patch else "unchanged"
    return action, changed, patch


@cli.command("apply")
@click.option("--file", "-f", "path", required=True, help="YAML file of endpoints ('-' for stdin).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for each config update.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait per endpoint.")
@click.option("--dry-run", is_flag=True, help="Print what would change, change nothing.")
@gateway_options
def apply(client: GatewayClient, output: str, path: str, wait: bool, timeout: float, dry_run: bool) -> None:
    """Create or update endpoints to match a YAML file (idempotent)."""
    results = []
    for item in load_endpoints(path):
        name = item["name"]
        try:
            endpoint = client.call("GET", f"{API}/{name}")
        except GatewayError as exc:
            if exc.status != 404:
                raise
            endpoint = None
        action, changed, patch = plan(item, endpoint)
        if not dry_run:
            if action == "create":
                body = {"name": name, "config": item["config"]}
                tags = desired_tags(item)
                if tags:
                    body["tags"] = _tag_list(tags)
                client.call("POST", API, body)
            elif changed:
                client.call("PUT", f"{API}/{name}/config", item["config"])
            if patch:
                client.call("PATCH", f"{API}/{name}/tags", patch)
            if changed and wait:
                wait_for_update(client, name, timeout, quiet=output == "json")
        what = {"create": "created", "update": "updated", "unchanged": "unchanged"}[action]
        detail = []
        if action == "update" and changed:
            detail.append("config")
        if patch:
            detail.append("tags")
        results.append({"name": name, "action": action, "changed": detail, "dry_run": dry_run})
        if output != "json":
            suffix = f" ({', '.join(detail)})" if detail else ""
            prefix = "would be " if dry_run and action != "unchanged" else ""
            console.print(f"{name}: {prefix}{what}{suffix}")
    if output == "json":
        print_json(results)
