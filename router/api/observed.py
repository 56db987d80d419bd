"""The running system as the control plane reports it: the autoscaler's entity status turned into
API states and logs, and the minimal per-endpoint Prometheus text.

The autoscaler knows replicas, the data plane knows requests; this module only reads them.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from autoscaler.loop import Autoscaler
from autoscaler.spec import EntitySpec
from autoscaler.status import EntityStatus
from autoscaler.types import EntityKey
from router.api.lifecycle import Deployment
from router.api.views import EntityState
from router.dataplane.stats import DataPlaneStats
from runtime.errors import NotFound
from runtime.ready import READY_PREFIX as READY_MARKER

SCALING_REASONS_SHOWN = 5


class AutoscalerScaler:
    """The controller's ``Scaler`` over the real autoscaler."""

    def __init__(self, autoscaler: Autoscaler) -> None:
        self.autoscaler = autoscaler

    def apply(self, entity: EntityKey, spec: EntitySpec) -> None:
        self.autoscaler.apply(entity, spec)

    async def remove(self, entity: EntityKey) -> None:
        with contextlib.suppress(NotFound):  # already gone: removal is idempotent
            await self.autoscaler.remove(entity)

    def status(self, entity: EntityKey) -> EntityStatus | None:
        try:
            return self.autoscaler.status(entity)
        except NotFound:
            return None

    def ready_replicas(self, entity: EntityKey) -> int:
        status = self.status(entity)
        return status.ready if status is not None else 0

    def failure(self, entity: EntityKey) -> str | None:
        status = self.status(entity)
        return status.failed_reason if status is not None else None

    def entity_state(self, entity: EntityKey) -> EntityState | None:
        status = self.status(entity)
        return entity_state(status) if status is not None else None

    def logs(self, entity: EntityKey) -> str:
        try:
            return self.autoscaler.replica_logs(entity) or "(no replica has run yet)"
        except NotFound:
            return "(the served entity is not running)"

    def build_logs(self, entity: EntityKey) -> str:
        """How replicas were brought up: the scaling and replica events, then each replica's output up
        to the moment it became ready (model fetch, load, warm-up), oldest first."""
        status = self.status(entity)
        if status is None:
            return "(the served entity is not running)"
        lines = [f"served entity {entity.served_entity}: model {status.spec.model_uri}"
                 f" (template generation {status.generation})"]
        lines += [f"{_utc(record.at_unix_ms)} {record.reason}" for record in status.history]
        if status.failed_reason:
            lines.append(f"FAILED: {status.failed_reason}")
        lines += startup_sections(self.logs(entity))
        return "\n".join(lines)


def _utc(unix_ms: int) -> str:
    """2026-12-06T03:27:08.123Z: a time a person reads (and sorts), not epoch milliseconds."""
    moment = datetime.datetime.fromtimestamp(unix_ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{unix_ms % 1000:03d}Z"


def startup_sections(replica_logs: str) -> list[str]:
    """The start-up part of each replica's section of ``Autoscaler.replica_logs``: its lines up to and
    including the runtime's ready announcement (all of it for a replica that never became ready)."""
    kept: list[str] = []
    in_startup = False
    for line in replica_logs.splitlines():
        if line.startswith("--- replica "):
            in_startup = True
            kept.append(line)
        elif in_startup:
            kept.append(line)
            if READY_MARKER in line:
                in_startup = False
    return kept


def entity_state(status: EntityStatus) -> EntityState:
    deployment = Deployment(status.deployment.value)
    return EntityState(
        deployment=deployment,
        message=_message(status, deployment),
        desired=status.desired,
        starting=status.starting,
        ready=status.ready,
        draining=status.draining,
        scaling=[
            {"timestamp": r.at_unix_ms, "from": r.from_replicas, "to": r.to_replicas, "reason": r.reason}
            for r in status.history[-SCALING_REASONS_SHOWN:]
        ],
        optimization=_optimization(status),
    )


def _optimization(status: EntityStatus) -> dict[str, str] | None:
    optimization = status.optimization
    if optimization is None:
        return None
    return {"path": optimization.path, "mode": optimization.mode, "reason": optimization.reason}


def _message(status: EntityStatus, deployment: Deployment) -> str:
    if deployment is Deployment.FAILED:
        return status.failed_reason or "The served entity failed."
    if deployment is Deployment.READY:
        if status.ready == 0:
            return "Scaled to zero: the next request starts a replica."
        return f"{status.ready} replica(s) ready."
    if deployment is Deployment.RECOVERING:
        return f"Replacing replicas: {status.starting} starting."
    if deployment is Deployment.ABORTED:
        return "The served entity was removed before it was ready."
    return f"Starting {status.starting} replica(s): fetching, loading and warming up the model."


class _EndpointCollector(Collector):
    def __init__(
        self, endpoint: str, entities: list[EntityKey], stats: DataPlaneStats,
        state_of: Callable[[EntityKey], EntityState | None],
    ) -> None:
        self.endpoint = endpoint
        self.entities = entities
        self.stats = stats
        self.state_of = state_of

    def collect(self) -> Iterator[Metric]:
        labels = ["endpoint", "served_entity"]
        requests = CounterMetricFamily("zeroserve_requests", "Requests answered, by status code",
                                       labels=[*labels, "code"])
        latency = HistogramMetricFamily("zeroserve_request_duration_seconds",
                                        "Time from request to answer, queueing included", labels=labels)
        replicas = GaugeMetricFamily("zeroserve_replicas", "Replicas by state", labels=[*labels, "state"])
        for key in self.entities:
            values = [key.endpoint, key.served_entity]
            stats = self.stats.entity(key)
            for code, count in sorted(stats.by_status.items()):
                requests.add_metric([*values, str(code)], count)
            buckets = [(_bound(bound), count) for bound, count in stats.cumulative_buckets()]
            latency.add_metric(values, buckets, stats.latency_sum_s)
            state = self.state_of(key)
            if state is not None:
                for name, count in state.replicas.items():
                    replicas.add_metric([*values, name], count)
        yield requests
        yield latency
        yield replicas


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def endpoint_metrics(
    endpoint: str, entities: list[EntityKey], stats: DataPlaneStats,
    state_of: Callable[[EntityKey], EntityState | None],
) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_EndpointCollector(endpoint, entities, stats, state_of))
    return generate_latest(registry)
