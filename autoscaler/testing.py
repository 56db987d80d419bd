"""Hand-written fakes for driving the autoscaler without processes or real time.

``FakeClock`` only moves when told to; ``FakeBackend`` runs "replicas" that are just records, with a
configurable start delay on the fake clock, models that fail to load, and crashes on demand;
``RecordingListener`` records what the router would have been told. Used by the loop tests, the
router's tests and the autoscaler simulation benchmark.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

from autoscaler.backend import ReplicaHealth, ReplicaStartError
from autoscaler.spec import EntitySpec
from autoscaler.types import EntityKey, ReplicaInfo

WALL_EPOCH = 1_700_000_000.0


async def let_tasks_run(rounds: int = 20) -> None:
    """Yield to the event loop until tasks woken by the fake clock have done what they can."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return WALL_EPOCH + self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its own deadline, in order."""
        target = self._now + seconds
        await let_tasks_run()  # tasks spawned just before must register their sleeps at the current time
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not future.done():
                future.set_result(None)
            await let_tasks_run()
        self._now = target
        await let_tasks_run()


@dataclass
class FakeReplica:
    replica_id: str
    entity: EntityKey
    spec: EntitySpec
    ready: bool = False
    exited: bool = False
    unhealthy: bool = False
    stopped: bool = False


@dataclass
class FakeBackend:
    clock: FakeClock
    start_delay_s: float = 0.0
    # model_uri -> the error a replica of that model fails with
    failing_models: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, FakeReplica] = field(default_factory=dict)
    starts: int = 0
    stops: list[str] = field(default_factory=list)
    opened: bool = False
    closed: bool = False

    async def open(self) -> None:
        self.opened = True

    async def start_replica(self, entity: EntityKey, spec: EntitySpec, replica_id: str) -> ReplicaInfo:
        self.starts += 1
        replica = FakeReplica(replica_id, entity, spec)
        self.replicas[replica_id] = replica
        try:
            await self.clock.sleep(self.start_delay_s)
        except asyncio.CancelledError:
            replica.stopped = True
            raise
        error = self.failing_models.get(spec.model_uri)
        if error is not None:
            replica.exited = True
            raise ReplicaStartError(f"replica {replica_id} failed to load {spec.model_uri}: {error}",
                                    log_tail=f"Traceback (most recent call last):\n{error}\n")
        replica.ready = True
        return ReplicaInfo(replica_id, entity, f"http://fake/{replica_id}",
                           spec.autoscaling.container_concurrency)

    async def stop_replica(self, replica_id: str, timeout_s: float) -> None:
        replica = self.replicas.get(replica_id)
        if replica is not None and not replica.stopped:
            replica.stopped = True
            self.stops.append(replica_id)

    async def health(self, replica_id: str) -> ReplicaHealth:
        replica = self.replicas.get(replica_id)
        if replica is None or replica.exited or replica.stopped:
            return ReplicaHealth.EXITED
        return ReplicaHealth.UNHEALTHY if replica.unhealthy else ReplicaHealth.HEALTHY

    def list_replicas(self) -> list[ReplicaInfo]:
        return [ReplicaInfo(r.replica_id, r.entity, f"http://fake/{r.replica_id}",
                            r.spec.autoscaling.container_concurrency)
                for r in self.replicas.values() if r.ready and not (r.exited or r.stopped)]

    def logs(self, replica_id: str) -> str:
        replica = self.replicas.get(replica_id)
        return "" if replica is None else f"fake replica {replica_id} serving {replica.spec.model_uri}\n"

    async def close(self) -> None:
        self.closed = True
        for replica in self.replicas.values():
            replica.stopped = True

    # --- test controls ---

    def crash(self, replica_id: str) -> None:
        self.replicas[replica_id].exited = True

    def running(self, entity: EntityKey | None = None) -> list[str]:
        return [r.replica_id for r in self.replicas.values()
                if r.ready and not (r.exited or r.stopped) and (entity is None or r.entity == entity)]


@dataclass
class RecordingListener:
    """Records the calls a router's activator would get, in order."""

    events: list[tuple[str, str]] = field(default_factory=list)
    ready: dict[str, ReplicaInfo] = field(default_factory=dict)
    failures: dict[EntityKey, str] = field(default_factory=dict)
    drain_delay_s: float = 0.0

    def replica_ready(self, replica: ReplicaInfo) -> None:
        self.events.append(("ready", replica.replica_id))
        self.ready[replica.replica_id] = replica

    async def replica_draining(self, replica: ReplicaInfo) -> None:
        self.events.append(("draining", replica.replica_id))
        self.ready.pop(replica.replica_id, None)
        if self.drain_delay_s:
            await asyncio.sleep(self.drain_delay_s)

    def replica_gone(self, replica: ReplicaInfo) -> None:
        self.events.append(("gone", replica.replica_id))
        self.ready.pop(replica.replica_id, None)

    def entity_failed(self, entity: EntityKey, reason: str) -> None:
        self.events.append(("failed", str(entity)))
        self.failures[entity] = reason
