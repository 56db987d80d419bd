"""Read-only views of the autoscaler's state, for the control-plane API, the CLI and the dashboard."""

from __future__ import annotations

from dataclasses import dataclass

from autoscaler.lifecycle import DeploymentState
from autoscaler.spec import EntitySpec
from autoscaler.types import EntityKey, ReplicaInfo, ReplicaOptimization, ReplicaState


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One entry of the "why did it scale?" history: a scaling decision or a replica event."""

    at: float  # the autoscaler clock (monotonic seconds)
    at_unix_ms: int  # wall time, for people and the API (Databricks timestamps are in ms)
    from_replicas: int
    to_replicas: int
    reason: str


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    replica_id: str
    state: ReplicaState
    generation: int  # bumped whenever the entity's replica template (model, env, batching) changes
    info: ReplicaInfo | None  # None until it is ready (the URL is known only then)


@dataclass(frozen=True, slots=True)
class EntityStatus:
    entity: EntityKey
    spec: EntitySpec
    generation: int
    desired: int
    starting: int
    ready: int
    draining: int
    deployment: DeploymentState
    failed_reason: str | None
    panicking: bool
    replicas: tuple[ReplicaStatus, ...]
    history: tuple[DecisionRecord, ...]  # oldest first, bounded
    # How the latest ready replica of the current template serves the model (kept while scaled to zero);
    # None until one was ready.
    optimization: ReplicaOptimization | None = None
