"""Request bodies of the serving-endpoints API and the normalized config they become.

Bodies follow the Databricks shapes; unknown fields (from newer clients) are accepted and ignored.
``parse_*`` turn a JSON body into a validated, normalized ``EndpointConfig`` (what is stored and
deployed) or raise ``InvalidParameterValue`` naming the offending field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runtime.errors import InvalidParameterValue

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
NAME_RULE = "alphanumerics, '-' and '_', starting with an alphanumeric, at most 63 characters"
URI_SCHEMES = ("s3://", "file://", "models:/", "runs:/")
WORKLOAD_SIZES = ("Small", "Medium", "Large")
# zeroserve extension ``optimization`` on a served entity (runtime/optimize): "auto" serves an MLflow
# model as a verified ONNX conversion when there is one, "off" never does, "required" fails the
# deployment when there is none.
OptimizationMode = Literal["auto", "off", "required"]
OPTIMIZATION_MODES: tuple[OptimizationMode, ...] = ("auto", "off", "required")
WORKLOAD_TYPES = (
    "CPU", "CPU_MEDIUM", "CPU_LARGE", "GPU_SMALL", "GPU_MEDIUM", "GPU_LARGE", "GPU_XLARGE", "GPU_XLARGE_8",
    "MULTIGPU_MEDIUM",
)


def validate_name(value: str, what: str) -> str:
    if not NAME_RE.match(value):
        raise InvalidParameterValue(f"{what} {value!r} is invalid: use {NAME_RULE}")
    return value


def name_safe(text: str) -> str:
    """``"s3://b/models/propensity"`` + version → a valid served-entity name such as ``"propensity"``."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-_")
    return (safe or "model")[:63].rstrip("-_")


class _Lenient(BaseModel):
    # Newer clients send fields we do not know: accept and ignore them.
    model_config = ConfigDict(extra="ignore")


class AutoscalingInput(_Lenient):
    """The zeroserve extension object ``autoscaling`` on a served entity (None = the autoscaler default)."""

    container_concurrency: int | None = Field(default=None, ge=1, le=10_000)
    target_utilization: float | None = Field(default=None, gt=0, le=1)
    stable_window_s: float | None = Field(default=None, gt=0, le=3600)
    panic_window_pct: float | None = Field(default=None, gt=0, le=100)
    panic_threshold: float | None = Field(default=None, ge=1)
    backlog_drain_s: float | None = Field(default=None, gt=0, le=3600)
    max_scale_up_rate: float | None = Field(default=None, gt=1)
    max_scale_down_rate: float | None = Field(default=None, gt=1)
    scale_down_delay_s: float | None = Field(default=None, ge=0, le=3600)
    scale_to_zero_grace_s: float | None = Field(default=None, ge=0, le=86_400)
    max_queue: int | None = Field(default=None, ge=0, le=1_000_000)
    queue_timeout_s: float | None = Field(default=None, gt=0, le=3600)
    # How long a replica may take from start to ready (fetch, load, warm-up) before it is stopped and
    # the start counts as failed: a big model needs longer, a hung one should fail sooner.
    start_timeout_s: float | None = Field(default=None, gt=0, le=3600)
    # [{"start": "08:30", "end": "10:00", "min_replicas": 3}]: checked by the autoscaler's spec.
    prewarm: list[dict[str, Any]] | None = Field(default=None, max_length=48)

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class ServedEntityInput(_Lenient):
    entity_name: str | None = Field(default=None, min_length=1)
    entity_version: str | None = None
    # The legacy ``served_models`` spelling.
    model_name: str | None = Field(default=None, min_length=1)
    model_version: str | None = None
    name: str | None = None
    workload_size: str | None = None
    workload_type: str | None = None
    scale_to_zero_enabled: bool = False
    min_provisioned_concurrency: int | None = Field(default=None, ge=0, le=100_000)
    max_provisioned_concurrency: int | None = Field(default=None, ge=1, le=100_000)
    environment_vars: dict[str, str] = Field(default_factory=dict)
    autoscaling: AutoscalingInput = Field(default_factory=AutoscalingInput)
    optimization: OptimizationMode | None = None

    @field_validator("entity_version", "model_version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        # Clients send versions as "2" or 2; Databricks answers with strings.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("workload_size")
    @classmethod
    def _known_size(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for size in WORKLOAD_SIZES:
            if value.lower() == size.lower():
                return size
        raise ValueError(f"must be one of {', '.join(WORKLOAD_SIZES)}")

    @field_validator("optimization", mode="before")
    @classmethod
    def _known_optimization(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or value.lower() not in OPTIMIZATION_MODES:
            raise ValueError(f"must be one of {', '.join(OPTIMIZATION_MODES)}, got {value!r}")
        return value.lower()

    @field_validator("workload_type")
    @classmethod
    def _known_type(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.upper() not in WORKLOAD_TYPES:
            raise ValueError(f"must be one of {', '.join(WORKLOAD_TYPES)}")
        return value.upper()


class RouteInput(_Lenient):
    served_entity_name: str | None = None
    served_model_name: str | None = None
    traffic_percentage: int = Field(ge=0, le=100)


class TrafficConfigInput(_Lenient):
    routes: list[RouteInput] = Field(default_factory=list)


class EndpointCoreConfigInput(_Lenient):
    name: str | None = None  # a create body may repeat the endpoint name here
    served_entities: list[ServedEntityInput] | None = None
    served_models: list[ServedEntityInput] | None = None
    traffic_config: TrafficConfigInput | None = None
    # Inference tables (enforced by the observability work): kept verbatim, echoed back.
    auto_capture_config: dict[str, Any] | None = None

    @field_validator("auto_capture_config")
    @classmethod
    def _known_table_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # zeroserve's extension: the table's format; anything else is refused, not silently Parquet.
        if value is not None and value.get("format") not in (None, "parquet", "delta"):
            raise ValueError(f"format must be parquet or delta, got {value.get('format')!r}")
        return value


class TagInput(_Lenient):
    key: str = Field(min_length=1, max_length=255)
    value: str | None = Field(default=None, max_length=255)


class CreateEndpointInput(_Lenient):
    name: str
    config: EndpointCoreConfigInput
    tags: list[TagInput] = Field(default_factory=list)
    description: str | None = Field(default=None, max_length=10_000)
    route_optimized: bool | None = None
    # Kept verbatim for the components that enforce them (rate limits, AI gateway).
    rate_limits: list[dict[str, Any]] | None = None
    ai_gateway: dict[str, Any] | None = None


class PatchTagsInput(_Lenient):
    add_tags: list[TagInput] = Field(default_factory=list)
    delete_tags: list[str] = Field(default_factory=list)


# ---- the normalized config: what is stored, deployed and shown -------------------------------


class ServedEntity(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    entity_name: str
    entity_version: str | None
    model_uri: str
    workload_size: str
    workload_type: str
    scale_to_zero_enabled: bool
    min_provisioned_concurrency: int
    max_provisioned_concurrency: int | None
    environment_vars: dict[str, str]
    autoscaling: dict[str, Any]
    # Which spelling the client used, so that answers echo it (served_models vs served_entities).
    legacy: bool = False
    # Defaulted so that configs stored before the field existed still load.
    optimization: OptimizationMode = "auto"

    def replica_identity(self) -> tuple[str, tuple[tuple[str, str], ...], str, str]:
        """What a running replica is made of: a change here needs new replicas, anything else does not."""
        return (self.model_uri, tuple(sorted(self.environment_vars.items())), self.workload_type,
                self.optimization)


class Route(BaseModel):
    model_config = ConfigDict(frozen=True)

    served_entity_name: str
    traffic_percentage: int


class EndpointConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    served_entities: list[ServedEntity]
    routes: list[Route]
    auto_capture_config: dict[str, Any] | None = None

    def entity(self, name: str) -> ServedEntity:
        for entity in self.served_entities:
            if entity.name == name:
                return entity
        raise KeyError(name)

    def traffic(self, name: str) -> int:
        return sum(route.traffic_percentage for route in self.routes if route.served_entity_name == name)


_M = TypeVar("_M", bound=BaseModel)


def parse_body(model: type[_M], body: Any, prefix: str = "") -> _M:
    if not isinstance(body, dict):
        raise InvalidParameterValue(f"{prefix or 'request body'} must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise InvalidParameterValue(_describe(exc, prefix)) from None


def _describe(exc: ValidationError, prefix: str) -> str:
    problems = []
    for error in exc.errors()[:5]:
        path = prefix
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{path or 'body'}: {message}")
    return "; ".join(problems)


Resolver = Callable[[str, "str | None", str], str]


def normalize_config(
    raw: EndpointCoreConfigInput, prefix: str = "config", *, resolve: Resolver | None = None
) -> EndpointConfig:
    """Validate the cross-field rules and resolve names, URIs (``resolve``, default the registry rule)
    and traffic."""
    if raw.served_entities and raw.served_models:
        raise InvalidParameterValue(f"{prefix}: give served_entities or served_models, not both")
    legacy = not raw.served_entities and bool(raw.served_models)
    field = "served_models" if legacy else "served_entities"
    inputs = raw.served_models if legacy else raw.served_entities
    if not inputs:
        raise InvalidParameterValue(f"{prefix}.served_entities: at least one served entity is required")
    if len(inputs) > 15:
        raise InvalidParameterValue(f"{prefix}.{field}: at most 15 served entities per endpoint")
    resolver = resolve or resolve_model_uri
    entities = [
        _normalize_entity(item, f"{prefix}.{field}[{i}]", legacy, resolver) for i, item in enumerate(inputs)
    ]
    seen: set[str] = set()
    for i, entity in enumerate(entities):
        if entity.name in seen:
            raise InvalidParameterValue(
                f"{prefix}.{field}[{i}].name: duplicate served entity name {entity.name!r}"
            )
        seen.add(entity.name)
    return EndpointConfig(
        served_entities=entities,
        routes=_normalize_routes(raw, entities, prefix),
        auto_capture_config=raw.auto_capture_config,
    )


def _normalize_entity(item: ServedEntityInput, where: str, legacy: bool, resolve: Resolver) -> ServedEntity:
    entity_name = item.entity_name or item.model_name
    version = item.entity_version or item.model_version
    if not entity_name:
        raise InvalidParameterValue(f"{where}.{'model_name' if legacy else 'entity_name'}: is required")
    model_uri = resolve(entity_name, version, where)
    if item.name is not None:
        name = validate_name(item.name, f"{where}.name")
    else:
        name = name_safe(f"{_model_base(entity_name, version)}-{version}" if version else
                         _model_base(entity_name, version))
    minimum = item.min_provisioned_concurrency or 0
    maximum = item.max_provisioned_concurrency
    if maximum is not None and minimum > maximum:
        raise InvalidParameterValue(
            f"{where}.min_provisioned_concurrency: {minimum} is above max_provisioned_concurrency {maximum}"
        )
    if item.workload_size is not None and maximum is not None:
        raise InvalidParameterValue(
            f"{where}.workload_size: give workload_size or max_provisioned_concurrency, not both"
        )
    for key in item.environment_vars:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise InvalidParameterValue(f"{where}.environment_vars: {key!r} is not a valid variable name")
    return ServedEntity(
        name=name,
        entity_name=entity_name,
        entity_version=version,
        model_uri=model_uri,
        workload_size=item.workload_size or "Small",
        workload_type=item.workload_type or "CPU",
        scale_to_zero_enabled=item.scale_to_zero_enabled,
        min_provisioned_concurrency=minimum,
        max_provisioned_concurrency=maximum,
        environment_vars=dict(item.environment_vars),
        autoscaling=item.autoscaling.given(),
        legacy=legacy,
        optimization=item.optimization or "auto",
    )


def _model_base(entity_name: str, version: str | None) -> str:
    """The model's own name in ``entity_name``: ``s3://b/models/propensity/2`` -> ``propensity``."""
    if not _is_uri(entity_name):
        return entity_name
    segments = [part for part in entity_name.split("://", 1)[-1].split("/") if part]
    # A trailing segment that is the version (or any number) names the version, not the model.
    while len(segments) > 1 and (segments[-1] == version or segments[-1].isdigit()):
        segments.pop()
    return segments[-1] if segments else "model"


def _is_uri(text: str) -> bool:
    return text.startswith(URI_SCHEMES)


def resolve_model_uri(entity_name: str, version: str | None, where: str) -> str:
    """An ``entity_name`` that is a URI is used as is; anything else is a registered MLflow model."""
    if _is_uri(entity_name):
        return entity_name
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise InvalidParameterValue(
            f"{where}.entity_name: {entity_name!r} is not a model URI ({', '.join(URI_SCHEMES)})"
            " and no MLflow registry is configured (set MLFLOW_TRACKING_URI)"
        )
    if not version:
        raise InvalidParameterValue(f"{where}.entity_version: is required for a registered model")
    return f"models:/{entity_name}/{version}"


def _normalize_routes(raw: EndpointCoreConfigInput, entities: list[ServedEntity], prefix: str) -> list[Route]:
    names = [entity.name for entity in entities]
    if raw.traffic_config is None or not raw.traffic_config.routes:
        if len(entities) > 1:
            raise InvalidParameterValue(
                f"{prefix}.traffic_config.routes: required when there is more than one served entity"
            )
        return [Route(served_entity_name=names[0], traffic_percentage=100)]
    routes: list[Route] = []
    for i, route in enumerate(raw.traffic_config.routes):
        where = f"{prefix}.traffic_config.routes[{i}]"
        target = route.served_entity_name or route.served_model_name
        if not target:
            raise InvalidParameterValue(f"{where}.served_entity_name: is required")
        if target not in names:
            raise InvalidParameterValue(
                f"{where}.served_entity_name: {target!r} is not a served entity of this config"
                f" ({', '.join(names)})"
            )
        if any(existing.served_entity_name == target for existing in routes):
            raise InvalidParameterValue(f"{where}.served_entity_name: {target!r} is routed twice")
        routes.append(Route(served_entity_name=target, traffic_percentage=route.traffic_percentage))
    total = sum(route.traffic_percentage for route in routes)
    if total != 100:
        raise InvalidParameterValue(
            f"{prefix}.traffic_config.routes: traffic percentages sum to {total}, not 100"
        )
    return routes


ConfigUpdate = Literal["NOT_UPDATING", "IN_PROGRESS", "UPDATE_FAILED", "UPDATE_CANCELED"]
