"""Endpoint objects as the Databricks API shows them (plus zeroserve's extension fields).

Stored desired state (``EndpointRecord``) and observed state (``EntityState``, from the autoscaler) are
merged here and nowhere else, so every answer — get, list, create, update — has the same shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoscaler.types import EntityKey
from router.api.lifecycle import Deployment
from router.api.models import EndpointConfig, ServedEntity
from router.api.specs import entity_spec
from router.observability.cost import sum_costs
from router.state.endpoints import ConfigVersion, EndpointRecord


@dataclass(frozen=True, slots=True)
class EntityState:
    """What is running for one served entity right now."""

    deployment: Deployment
    message: str
    desired: int = 0
    starting: int = 0
    ready: int = 0
    draining: int = 0
    # The last scaling decisions, newest last: {"timestamp": ms, "reason": "..."}.
    scaling: list[dict[str, Any]] = field(default_factory=list)
    # zeroserve extension, filled by observability: replica-seconds, cost, cost per 1,000 inferences.
    cost: dict[str, Any] | None = None
    # zeroserve extension: how the replicas serve the model, {"path": "onnx"|"native", "mode", "reason"};
    # None until a replica of the current config was ready.
    optimization: dict[str, str] | None = None

    @property
    def replicas(self) -> dict[str, int]:
        return {
            "desired": self.desired, "starting": self.starting, "ready": self.ready, "draining": self.draining
        }


UNKNOWN = EntityState(Deployment.CREATING, "Waiting for the autoscaler to pick up the served entity.")

StateOf = Callable[[EntityKey], EntityState | None]


def endpoint_detailed(record: EndpointRecord, state_of: StateOf, base_url: str) -> dict[str, Any]:
    body = _common(record, state_of)
    body["config"] = _config(record, record.config, state_of) if record.config else None
    if record.pending is not None:
        pending = _config(record, record.pending, state_of)
        pending["start_time"] = record.pending.created_ms
        body["pending_config"] = pending
    body["endpoint_url"] = f"{base_url}/serving-endpoints/{record.name}/invocations"
    body["permission_level"] = "CAN_MANAGE"
    body["route_optimized"] = bool(record.extras.get("route_optimized", False))
    for key in ("rate_limits", "ai_gateway"):
        if key in record.extras:
            body[key] = record.extras[key]
    return _without_none(body)


def endpoint_summary(record: EndpointRecord, state_of: StateOf) -> dict[str, Any]:
    body = _common(record, state_of)
    active = record.config or record.pending
    if active is not None:
        body["config"] = {
            "served_entities": [
                _without_none({"name": e.name, "entity_name": e.entity_name,
                               "entity_version": e.entity_version})
                for e in active.config.served_entities
            ]
        }
    return _without_none(body)


def _common(record: EndpointRecord, state_of: StateOf) -> dict[str, Any]:
    state: dict[str, Any] = {
        "ready": "READY" if _ready(record, state_of) else "NOT_READY",
        "config_update": record.config_update.value,
    }
    if record.update_message:
        state["config_update_message"] = record.update_message
    states = [state_of(key) for key in _entity_keys(record)]
    entity_costs = [s.cost for s in states if s is not None and s.cost is not None]
    return _without_none({
        "name": record.name,
        "id": record.id,
        "creator": record.creator,
        "creation_timestamp": record.created_ms,
        "last_updated_timestamp": record.updated_ms,
        "description": record.description,
        "state": state,
        "tags": [_without_none({"key": k, "value": v}) for k, v in sorted(record.tags.items())],
        # zeroserve extension: what the endpoint's replicas have cost (its served entities summed).
        "cost": sum_costs(entity_costs) if entity_costs else None,
    })


def _ready(record: EndpointRecord, state_of: StateOf) -> bool:
    """READY when the serving config exists and every entity taking traffic can take a request."""
    if record.config is None:
        return False
    config = record.config.config
    routed = [r.served_entity_name for r in config.routes if r.traffic_percentage > 0]
    states = [state_of(EntityKey(record.name, entity)) for entity in routed]
    return bool(states) and all(s is not None and s.deployment is Deployment.READY for s in states)


def _config(record: EndpointRecord, version: ConfigVersion, state_of: StateOf) -> dict[str, Any]:
    config = version.config
    entities = [_entity(record, version, e, state_of) for e in config.served_entities]
    body: dict[str, Any] = {"config_version": version.version, "served_entities": entities}
    if any(e.legacy for e in config.served_entities):
        body["served_models"] = [_as_served_model(entity) for entity in entities]
    body["traffic_config"] = {"routes": _routes(config)}
    if config.auto_capture_config is not None:
        body["auto_capture_config"] = config.auto_capture_config
    return body


def _entity(
    record: EndpointRecord, version: ConfigVersion, entity: ServedEntity, state_of: StateOf
) -> dict[str, Any]:
    state = state_of(EntityKey(record.name, entity.name)) or UNKNOWN
    return _without_none({
        "name": entity.name,
        "entity_name": entity.entity_name,
        "entity_version": entity.entity_version,
        "model_uri": entity.model_uri,
        "workload_size": entity.workload_size,
        "workload_type": entity.workload_type,
        "scale_to_zero_enabled": entity.scale_to_zero_enabled,
        "min_provisioned_concurrency": entity.min_provisioned_concurrency,
        "max_provisioned_concurrency": entity.max_provisioned_concurrency,
        "environment_vars": entity.environment_vars or None,
        "autoscaling": autoscaling_view(entity),
        "optimization": entity.optimization,
        "creation_timestamp": version.created_ms,
        "creator": record.creator,
        "state": _without_none({
            "deployment": state.deployment.value,
            "deployment_state_message": state.message,
            "replicas": state.replicas,
            "scaling": state.scaling,
            "cost": state.cost,
            "optimization": state.optimization,
        }),
    })


def _entity_keys(record: EndpointRecord) -> list[EntityKey]:
    versions = [v for v in (record.config, record.pending) if v is not None]
    names = {e.name for v in versions for e in v.config.served_entities}
    return [EntityKey(record.name, name) for name in sorted(names)]


def autoscaling_view(entity: ServedEntity) -> dict[str, Any]:
    """The effective autoscaling settings of an entity (its own plus the defaults)."""
    spec = entity_spec(entity)
    autoscaling = dataclasses.asdict(spec.autoscaling)
    autoscaling["workload_size"] = autoscaling["workload_size"].value
    autoscaling["start_timeout_s"] = spec.start_timeout_s
    return autoscaling


def _as_served_model(entity: dict[str, Any]) -> dict[str, Any]:
    model = dict(entity)
    model["model_name"] = model.pop("entity_name")
    if "entity_version" in model:
        model["model_version"] = model.pop("entity_version")
    return model


def _routes(config: EndpointConfig) -> list[dict[str, Any]]:
    return [
        {
            "served_entity_name": route.served_entity_name,
            "served_model_name": route.served_entity_name,
            "traffic_percentage": route.traffic_percentage,
        }
        for route in config.routes
    ]


def _without_none(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if value is not None}
