"""From the API's served entities to the autoscaler's specs and the router's routes.

Built once at validation time too, so that a value only the autoscaler can judge (a reserved floor
above the ceiling of the workload size, say) is a 400 on the request that set it, not a failed rollout.
"""

from __future__ import annotations

import dataclasses

from autoscaler.spec import AutoscalingSpec, EntitySpec
from autoscaler.types import EntityKey
from router.api.models import EndpointConfig, ServedEntity
from router.dataplane.routing import EndpointRouting
from runtime.errors import InvalidParameterValue


def entity_spec(entity: ServedEntity) -> EntitySpec:
    given = dict(entity.autoscaling)
    # Under ``autoscaling`` in the API (where users look for replica settings), but the entity's own.
    start_timeout_s = given.pop("start_timeout_s", None)
    autoscaling = AutoscalingSpec(
        **given,
        scale_to_zero_enabled=entity.scale_to_zero_enabled,
        min_provisioned_concurrency=entity.min_provisioned_concurrency,
        max_provisioned_concurrency=entity.max_provisioned_concurrency,
        workload_size=entity.workload_size,  # type: ignore[arg-type]  # parsed by __post_init__
    )
    spec = EntitySpec(
        model_uri=entity.model_uri,
        served_name=entity.name,
        model_version=entity.entity_version,
        environment_vars=dict(entity.environment_vars),
        workload_type=entity.workload_type,
        autoscaling=autoscaling,
        optimization=entity.optimization,
    )
    if start_timeout_s is not None:
        spec = dataclasses.replace(spec, start_timeout_s=float(start_timeout_s))
    return spec


def check_specs(config: EndpointConfig, field: str = "config.served_entities") -> dict[str, EntitySpec]:
    """Every entity's spec, or ``InvalidParameterValue`` naming the entity and the field."""
    specs: dict[str, EntitySpec] = {}
    for index, entity in enumerate(config.served_entities):
        try:
            specs[entity.name] = entity_spec(entity)
        except InvalidParameterValue as exc:
            raise InvalidParameterValue(f"{field}[{index}]: {exc.message}") from None
    return specs


def routing_for(endpoint: str, config: EndpointConfig) -> tuple[list[tuple[EntityKey, int]], EndpointRouting]:
    """The routing-table entry of a config: its routes, and queue limits from the routed entities."""
    specs = check_specs(config)
    routes = [(EntityKey(endpoint, r.served_entity_name), r.traffic_percentage) for r in config.routes]
    routed = [specs[r.served_entity_name].autoscaling for r in config.routes if r.traffic_percentage]
    if not routed:
        return routes, EndpointRouting()
    # The queue belongs to the endpoint in the router; the most generous entity setting wins so that no
    # entity's requests are turned away earlier than its own settings say.
    return routes, EndpointRouting(
        queue_timeout_s=max(spec.queue_timeout_s for spec in routed),
        max_queue=max(spec.max_queue for spec in routed),
    )
