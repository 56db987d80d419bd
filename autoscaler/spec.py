"""The desired state of one served entity: what to run (``EntitySpec``) and how to scale it
(``AutoscalingSpec``).

Both are plain frozen dataclasses so that the control plane can build them from the Databricks API
objects (``served_entities[*]`` of an endpoint config) without knowing anything else about the
autoscaler, and so that the policy can take them as pure inputs. Validation happens once, at
construction, and raises ``InvalidParameterValue`` naming the offending field, which the control plane
answers as a 400.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, TypeAlias

from runtime.errors import InvalidParameterValue

# The replica's automatic optimization (runtime/optimize): serve an MLflow model as a verified ONNX
# conversion when there is one ("auto"), never ("off"), or fail the replica when there is none
# ("required"). Spelled out here, not imported, so the gateway does not import the optimizer.
OptimizationMode: TypeAlias = Literal["auto", "off", "required"]
OPTIMIZATION_MODES: tuple[OptimizationMode, ...] = ("auto", "off", "required")


class WorkloadSize(enum.Enum):
    """Databricks' t-shirt sizes: each sets the default maximum provisioned concurrency."""

    SMALL = "Small"
    MEDIUM = "Medium"
    LARGE = "Large"

    @property
    def default_max_concurrency(self) -> int:
        return _WORKLOAD_SIZE_MAX_CONCURRENCY[self]

    @property
    def memory_mib(self) -> int:
        """A replica's memory: the pod's request and limit on Kubernetes, the RSS limit locally."""
        return _WORKLOAD_SIZE_MEMORY_MIB[self]

    @classmethod
    def parse(cls, value: str | WorkloadSize) -> WorkloadSize:
        """Accept the enum or its API spelling, case-insensitively ("Small", "small", "SMALL")."""
        if isinstance(value, WorkloadSize):
            return value
        for size in cls:
            if size.value.lower() == str(value).lower():
                return size
        allowed = ", ".join(size.value for size in cls)
        raise InvalidParameterValue(f"workload_size must be one of {allowed}, got {value!r}")


_WORKLOAD_SIZE_MAX_CONCURRENCY = {WorkloadSize.SMALL: 4, WorkloadSize.MEDIUM: 16, WorkloadSize.LARGE: 64}
_WORKLOAD_SIZE_MEMORY_MIB = {WorkloadSize.SMALL: 2048, WorkloadSize.MEDIUM: 4096, WorkloadSize.LARGE: 8192}

_DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class PrewarmWindow:
    """Predictive warm-up: from ``start`` to ``end`` (UTC, "HH:MM") every day, keep at least
    ``min_replicas`` — started before the usual morning ramp instead of cold on its first requests.
    A window may pass midnight ("22:00" to "02:00")."""

    start: str
    end: str
    min_replicas: int

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            _clock_seconds(getattr(self, name), f"prewarm.{name}")
        _require(self.start != self.end, "prewarm", "start and end must differ", (self.start, self.end))
        _require(isinstance(self.min_replicas, int) and self.min_replicas >= 1, "prewarm.min_replicas",
                 "must be an integer >= 1", self.min_replicas)

    def covers(self, unix_s: float) -> bool:
        """True when the UTC time of day of ``unix_s`` is inside the window (start included)."""
        of_day = unix_s % _DAY_S
        start = _clock_seconds(self.start, "prewarm.start")
        end = _clock_seconds(self.end, "prewarm.end")
        if start < end:
            return start <= of_day < end
        return of_day >= start or of_day < end


def _clock_seconds(value: str, field_name: str) -> int:
    hours, _, minutes = str(value).partition(":")
    valid = (len(hours) == 2 and len(minutes) == 2 and hours.isdigit() and minutes.isdigit()
             and int(hours) < 24 and int(minutes) < 60)
    _require(valid, field_name, "must be a UTC time of day as HH:MM", value)
    return int(hours) * 3600 + int(minutes) * 60


@dataclass(frozen=True, slots=True)
class AutoscalingSpec:
    """Every setting of the scaling policy, per served entity; the defaults are Knative's KPA ones.

    Replica counts follow from concurrency: a replica takes ``container_concurrency`` requests at once,
    the policy aims to keep it ``target_utilization`` busy, the floor comes from
    ``min_provisioned_concurrency`` (or zero when ``scale_to_zero_enabled``) and the ceiling from
    ``max_provisioned_concurrency`` (or the ``workload_size`` default).
    """

    container_concurrency: int = 4
    target_utilization: float = 0.7
    stable_window_s: float = 60.0
    panic_window_pct: float = 10.0
    # Panic when the panic-window figure asks for at least this many times the ready replicas.
    panic_threshold: float = 2.0
    # The drain-aware estimate adds the replicas that clear a queued backlog within this time.
    backlog_drain_s: float = 5.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_down_delay_s: float = 0.0
    scale_to_zero_grace_s: float = 30.0
    scale_to_zero_enabled: bool = True
    min_provisioned_concurrency: int = 0
    # None: the workload_size default (Small 4, Medium 16, Large 64).
    max_provisioned_concurrency: int | None = None
    workload_size: WorkloadSize = WorkloadSize.SMALL
    # The router's activator queue for this entity: at most max_queue requests held, each at most
    # queue_timeout_s (then 503 with Retry-After); a full queue answers 429 at once.
    max_queue: int = 256
    queue_timeout_s: float = 30.0
    # Scheduled warm-up windows (off when empty): each holds a minimum number of replicas.
    prewarm: tuple[PrewarmWindow, ...] = ()
    # Derived in __post_init__: the policy reads them for every entity on every tick.
    _floor: int = field(init=False, repr=False, compare=False)
    _ceiling: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.workload_size, str):
            # Frozen dataclass: the documented way to normalise a field in __post_init__.
            object.__setattr__(self, "workload_size", WorkloadSize.parse(self.workload_size))
        # The API gives the windows as mappings; the spec holds them as values (hashable, comparable).
        windows = (window if isinstance(window, PrewarmWindow) else _prewarm_window(window)
                   for window in self.prewarm)
        object.__setattr__(self, "prewarm", tuple(windows))
        _require(self.container_concurrency >= 1, "container_concurrency", "must be >= 1",
                 self.container_concurrency)
        _require(0.0 < self.target_utilization <= 1.0, "target_utilization", "must be in (0, 1]",
                 self.target_utilization)
        _require(self.stable_window_s > 0, "stable_window_s", "must be > 0", self.stable_window_s)
        _require(0.0 < self.panic_window_pct <= 100.0, "panic_window_pct", "must be in (0, 100]",
                 self.panic_window_pct)
        _require(self.panic_threshold >= 1.0, "panic_threshold", "must be >= 1.0", self.panic_threshold)
        _require(self.backlog_drain_s > 0, "backlog_drain_s", "must be > 0", self.backlog_drain_s)
        _require(self.max_scale_up_rate > 1.0, "max_scale_up_rate", "must be > 1.0", self.max_scale_up_rate)
        _require(self.max_scale_down_rate > 1.0, "max_scale_down_rate", "must be > 1.0",
                 self.max_scale_down_rate)
        _require(self.scale_down_delay_s >= 0, "scale_down_delay_s", "must be >= 0", self.scale_down_delay_s)
        _require(self.scale_to_zero_grace_s >= 0, "scale_to_zero_grace_s", "must be >= 0",
                 self.scale_to_zero_grace_s)
        _require(self.min_provisioned_concurrency >= 0, "min_provisioned_concurrency", "must be >= 0",
                 self.min_provisioned_concurrency)
        _require(self.max_concurrency >= 1, "max_provisioned_concurrency", "must be >= 1",
                 self.max_concurrency)
        _require(self.min_provisioned_concurrency <= self.max_concurrency, "min_provisioned_concurrency",
                 f"must be <= max_provisioned_concurrency ({self.max_concurrency})",
                 self.min_provisioned_concurrency)
        _require(self.max_queue >= 0, "max_queue", "must be >= 0", self.max_queue)
        _require(self.queue_timeout_s > 0, "queue_timeout_s", "must be > 0", self.queue_timeout_s)
        for name in ("target_utilization", "stable_window_s", "panic_window_pct", "panic_threshold",
                     "backlog_drain_s",
                     "max_scale_up_rate", "max_scale_down_rate", "scale_down_delay_s",
                     "scale_to_zero_grace_s", "queue_timeout_s"):
            _require(math.isfinite(getattr(self, name)), name, "must be finite", getattr(self, name))
        # Reserved floor: ceil(10 / 4) = 3 replicas, whether or not scale to zero is enabled; without
        # one, 0 with scale to zero and 1 without. Ceiling: ceil(16 / 4) = 4 for Medium, >= the floor.
        reserved = math.ceil(self.min_provisioned_concurrency / self.container_concurrency)
        floor = reserved if reserved > 0 else (0 if self.scale_to_zero_enabled else 1)
        object.__setattr__(self, "_floor", floor)
        ceiling = max(floor, math.ceil(self.max_concurrency / self.container_concurrency))
        object.__setattr__(self, "_ceiling", ceiling)
        for window in self.prewarm:
            _require(window.min_replicas <= ceiling, "prewarm.min_replicas",
                     f"must be <= the ceiling of {ceiling} replicas", window.min_replicas)

    @property
    def max_concurrency(self) -> int:
        if self.max_provisioned_concurrency is not None:
            return self.max_provisioned_concurrency
        return self.workload_size.default_max_concurrency

    @property
    def panic_window_s(self) -> float:
        # 60 s stable window x 10 % = 6 s panic window.
        return self.stable_window_s * self.panic_window_pct / 100.0

    @property
    def target_per_replica(self) -> float:
        # 4 concurrent x 0.7 = 2.8 concurrent requests per replica before another one is wanted.
        return self.container_concurrency * self.target_utilization

    @property
    def floor_replicas(self) -> int:
        """Replicas kept even when idle: a reserved floor (``min_provisioned_concurrency`` > 0) always
        holds; without one, 0 with scale to zero and 1 without it."""
        return self._floor

    @property
    def ceiling_replicas(self) -> int:
        """The most replicas ever run: ceil(max concurrency / C), at least the floor."""
        return self._ceiling


def _prewarm_window(value: object) -> PrewarmWindow:
    if not isinstance(value, Mapping) or set(value) - {"start", "end", "min_replicas"}:
        raise InvalidParameterValue(
            f"prewarm entries must be objects with start, end and min_replicas, got {value!r}")
    try:
        return PrewarmWindow(value["start"], value["end"], value["min_replicas"])
    except KeyError as missing:
        raise InvalidParameterValue(f"prewarm entries need {missing.args[0]}, got {dict(value)!r}") from None


def _require(condition: bool, field_name: str, rule: str, value: object) -> None:
    if not condition:
        raise InvalidParameterValue(f"{field_name} {rule}, got {value!r}")


@dataclass(frozen=True, slots=True)
class BatchingSpec:
    """Adaptive batching inside a replica. ``None`` leaves a setting to the runtime's default
    (``runtime.config.ReplicaSettings``: up to 64 rows, waiting at most 2 ms for requests already
    arriving, so an idle replica adds no delay)."""

    enabled: bool = True
    max_batch_size: int | None = None
    max_batch_delay_ms: float | None = None

    def __post_init__(self) -> None:
        if self.max_batch_size is not None:
            _require(self.max_batch_size >= 1, "max_batch_size", "must be >= 1", self.max_batch_size)
        if self.max_batch_delay_ms is not None:
            _require(math.isfinite(self.max_batch_delay_ms) and self.max_batch_delay_ms >= 0,
                     "max_batch_delay_ms", "must be >= 0", self.max_batch_delay_ms)


@dataclass(frozen=True, slots=True)
class EntitySpec:
    """What one served entity runs and how it scales; built by the control plane from a served
    entity of an endpoint config.

    ``model_uri`` is already resolved (``s3://``, ``file://``, ``models:/``, ``runs:/``): the runtime
    fetches it through the warm cache. ``served_name`` is the name requests see (the
    ``served-model-name`` header, the Open Inference Protocol model name). ``environment_vars`` are
    set in the replica's environment. Changing anything but ``autoscaling`` rolls the replicas (new
    ones start, old ones drain once the new ones are ready); changing ``autoscaling`` alone does not.
    """

    model_uri: str
    served_name: str
    # The version the Open Inference Protocol reports (the registry version when there is one).
    model_version: str | None = None
    environment_vars: Mapping[str, str] = field(default_factory=dict)
    workload_type: str = "CPU"
    autoscaling: AutoscalingSpec = field(default_factory=AutoscalingSpec)
    batching: BatchingSpec = field(default_factory=BatchingSpec)
    # Longest a replica may take from process start to ready (fetch + load + warm-up).
    start_timeout_s: float = 120.0
    # Longest a draining replica gets to finish its in-flight requests before it is killed.
    drain_timeout_s: float = 30.0
    optimization: OptimizationMode = "auto"

    def __post_init__(self) -> None:
        _require(bool(self.model_uri.strip()), "model_uri", "must not be empty", self.model_uri)
        _require(bool(self.served_name.strip()), "served_name", "must not be empty", self.served_name)
        for key, value in self.environment_vars.items():
            _require(isinstance(key, str) and bool(key) and "=" not in key and "\0" not in key,
                     "environment_vars", "keys must be non-empty names without '=' or NUL", key)
            _require(isinstance(value, str) and "\0" not in value, "environment_vars",
                     f"value of {key} must be a string without NUL", value)
        _require(self.start_timeout_s > 0, "start_timeout_s", "must be > 0", self.start_timeout_s)
        _require(self.drain_timeout_s >= 0, "drain_timeout_s", "must be >= 0", self.drain_timeout_s)
        _require(self.optimization in OPTIMIZATION_MODES, "optimization",
                 f"must be one of {', '.join(OPTIMIZATION_MODES)}", self.optimization)
        # A read-only copy: the spec is shared by the loop and the backend and must not change under them.
        object.__setattr__(self, "environment_vars", MappingProxyType(dict(self.environment_vars)))

    def same_replica_template(self, other: EntitySpec) -> bool:
        """True when replicas built for ``other`` can keep serving under ``self`` (only scaling differs)."""
        return (
            self.model_uri == other.model_uri
            and self.served_name == other.served_name
            and self.model_version == other.model_version
            and dict(self.environment_vars) == dict(other.environment_vars)
            and self.workload_type == other.workload_type
            and self.batching == other.batching
            and self.optimization == other.optimization
            and self.autoscaling.container_concurrency == other.autoscaling.container_concurrency
        )
