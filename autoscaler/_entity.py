"""The autoscaler loop's records of entities and replicas (mutable, owned by the loop)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from autoscaler.lifecycle import DeploymentFacts, ReplicaLifecycle, deployment_state
from autoscaler.metrics_window import MetricsWindow
from autoscaler.policy import PolicyState
from autoscaler.spec import EntitySpec
from autoscaler.status import DecisionRecord, EntityStatus, ReplicaStatus
from autoscaler.types import EntityKey, ReplicaInfo, ReplicaOptimization, ReplicaState

LIVE = (ReplicaState.STARTING, ReplicaState.READY)


@dataclass(eq=False)
class ReplicaRecord:
    replica_id: str
    generation: int
    spec: EntitySpec
    lifecycle: ReplicaLifecycle
    info: ReplicaInfo | None = None
    task: asyncio.Task[None] | None = None
    unhealthy_probes: int = 0

    @property
    def state(self) -> ReplicaState:
        return self.lifecycle.state


@dataclass(eq=False)
class EntityRecord:
    key: EntityKey
    spec: EntitySpec
    window: MetricsWindow
    generation: int = 1
    policy: PolicyState = field(default_factory=PolicyState)
    replicas: dict[str, ReplicaRecord] = field(default_factory=dict)
    history: deque[DecisionRecord] = field(default_factory=lambda: deque(maxlen=100))
    start_failures: int = 0
    crash_times: deque[float] = field(default_factory=lambda: deque(maxlen=16))
    next_start_at: float = 0.0
    failed_reason: str | None = None
    ever_ready: bool = False
    gone_replicas: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    tasks: set[asyncio.Task[None]] = field(default_factory=set)  # its starts and drains in flight
    closing: bool = False  # removed or the autoscaler is stopping: start nothing new
    # What the latest ready replica of this generation announced about its serving path.
    optimization: ReplicaOptimization | None = None

    def current(self, *states: ReplicaState) -> list[ReplicaRecord]:
        return [r for r in self.replicas.values() if r.generation == self.generation and r.state in states]

    def outdated(self, *states: ReplicaState) -> list[ReplicaRecord]:
        return [r for r in self.replicas.values() if r.generation != self.generation and r.state in states]


    def status(self) -> EntityStatus:
        ready = len(self.current(ReplicaState.READY))
        starting = len(self.current(ReplicaState.STARTING))
        facts = DeploymentFacts(self.policy.desired, ready, starting, self.ever_ready, self.failed_reason)
        return EntityStatus(
            entity=self.key,
            spec=self.spec,
            generation=self.generation,
            desired=self.policy.desired,
            starting=starting,
            ready=ready,
            draining=sum(1 for r in self.replicas.values() if r.state is ReplicaState.DRAINING),
            deployment=deployment_state(facts),
            failed_reason=self.failed_reason,
            panicking=self.policy.panicking,
            replicas=tuple(ReplicaStatus(r.replica_id, r.state, r.generation, r.info)
                           for r in self.replicas.values()),
            history=tuple(self.history),
            optimization=self.optimization,
        )
