"""The two descriptive tools: ``list_endpoints`` and ``get_endpoint_status``.

They answer from the same views as ``GET /api/2.0/serving-endpoints[/{name}]`` (``router.api.views``),
filtered by the same permissions (``CAN_VIEW``), trimmed to what an agent needs to pick an endpoint
and to know whether a call will be served at once or wait for a cold start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.api.views import StateOf, endpoint_detailed, endpoint_summary
from router.auth import PermissionLevel, authorize, filter_visible
from router.auth.directory import endpoint_ref
from router.errors import EndpointNotFound
from router.mcp.tools import tool_name
from router.state.endpoints import EndpointRecord, EndpointStore

LIST_INPUT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
LIST_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"endpoints": {"type": "array", "items": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "tool": {"type": ["string", "null"]},
                       "state": {"type": "object"}},
        "required": ["name", "tool", "state"],
    }}},
    "required": ["endpoints"],
}
STATUS_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1, "description": "The serving endpoint's name."}},
    "required": ["name"],
    "additionalProperties": False,
}
STATUS_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "state": {"type": "object"},
                   "served_entities": {"type": "array", "items": {"type": "object"}},
                   "tool": {"type": ["string", "null"]}},
    "required": ["name", "state", "served_entities", "tool"],
}
LIST_DESCRIPTION = (
    "List the model serving endpoints you may see: name, description, tags, readiness, served models, "
    "and 'tool', the name of the tool that queries the endpoint (null when you may not query it)."
)
STATUS_DESCRIPTION = (
    "The state of one serving endpoint: whether it is ready, whether a config update is in progress, and "
    "for each served model its deployment state, traffic share and replicas (0 ready replicas with "
    "scale-to-zero: the next query waits for a cold start)."
)


def _tool_of(conn: Mapping[str, Any], record: EndpointRecord) -> str | None:
    if record.config is None or not filter_visible(conn, [record], endpoint_ref, PermissionLevel.CAN_QUERY):
        return None
    return tool_name(record.name)


def list_endpoints(conn: Mapping[str, Any], store: EndpointStore, state_of: StateOf) -> dict[str, Any]:
    visible = filter_visible(conn, store.list_all(), endpoint_ref, PermissionLevel.CAN_VIEW)
    endpoints = []
    for record in visible:
        summary = endpoint_summary(record, state_of)
        endpoints.append({
            "name": record.name,
            "description": record.description,
            "tags": {key: value for key, value in sorted(record.tags.items())},
            "state": summary["state"],
            "served_entities": summary.get("config", {}).get("served_entities", []),
            "tool": _tool_of(conn, record),
        })
    return {"endpoints": endpoints}


def endpoint_status(
    conn: Mapping[str, Any], store: EndpointStore, state_of: StateOf, name: str, base_url: str
) -> dict[str, Any]:
    """Raises ``NotFound`` (missing or not visible) like the REST API."""
    authorize(conn, name, PermissionLevel.CAN_VIEW)
    record = store.find(name)
    if record is None:
        raise EndpointNotFound(name)
    detailed = endpoint_detailed(record, state_of, base_url)
    config = detailed.get("config") or {}
    traffic = {route["served_entity_name"]: route["traffic_percentage"]
               for route in (config.get("traffic_config") or {}).get("routes", [])}
    entities = [
        {
            "name": entity["name"],
            "entity_name": entity["entity_name"],
            "entity_version": entity.get("entity_version"),
            "traffic_percentage": traffic.get(entity["name"], 0),
            "scale_to_zero_enabled": entity.get("scale_to_zero_enabled", False),
            "deployment": entity["state"]["deployment"],
            "deployment_state_message": entity["state"].get("deployment_state_message"),
            "replicas": entity["state"].get("replicas"),
        }
        for entity in config.get("served_entities", [])
    ]
    status: dict[str, Any] = {
        "name": record.name,
        "state": detailed["state"],
        "config_version": config.get("config_version"),
        "served_entities": entities,
        "endpoint_url": detailed.get("endpoint_url"),
        "tool": _tool_of(conn, record),
    }
    pending = detailed.get("pending_config")
    if pending is not None:
        status["pending_config_version"] = pending.get("config_version")
    return status
