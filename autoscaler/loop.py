"""The autoscaler loop: decide for every served entity each tick, then make the backend match.

An async shell around synchronous state changes (style rule 5): ``_evaluate`` and ``_reconcile`` run
without awaiting anything, update the entity's state and spawn the I/O (start, drain+stop) as tasks;
the tasks update state again when they finish. Everything runs on one event loop, so no locks.

Who calls what:
- the control plane: ``apply`` (create/update), ``remove``, ``status``, ``replica_logs``;
- the router: ``report`` (concurrency samples), ``poke`` (a request is waiting at zero), ``replicas``,
  and it implements ``ReplicaListener`` to hear about replicas coming and going.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any

from autoscaler._entity import LIVE, EntityRecord, ReplicaRecord
from autoscaler.backend import (
    Backend,
    Clock,
    HandoverBackend,
    MonotonicClock,
    ReplicaHealth,
    ReplicaStartError,
)
from autoscaler.lifecycle import ReplicaEvent, ReplicaLifecycle
from autoscaler.metrics_window import MetricsWindow
from autoscaler.policy import Fleet, decide
from autoscaler.spec import EntitySpec
from autoscaler.status import DecisionRecord, EntityStatus
from autoscaler.types import EntityKey, ReplicaInfo, ReplicaListener, ReplicaState
from runtime.errors import NotFound

logger = logging.getLogger("zeroserve.autoscaler")

_LOG_TAIL_CHARS = 2000
# Consecutive failed readiness probes before a running replica is replaced.
_UNHEALTHY_LIMIT = 3
# Crashes older than this no longer lengthen the restart backoff.
_CRASH_MEMORY_S = 300.0


class Autoscaler:
    """Scales every served entity between its floor and ceiling; see the module docstring."""

    def __init__(
        self,
        backend: Backend,
        clock: Clock | None = None,
        listener: ReplicaListener | None = None,
        tick_s: float = 2.0,
        *,
        max_start_failures: int = 3,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        history_size: int = 100,
        replica_prefix: str = "",
    ) -> None:
        self._backend = backend
        # Replica ids are unique across gateways that lead in turn: each leader names its own.
        self._replica_prefix = replica_prefix
        self._clock: Clock = clock or MonotonicClock()
        self._listener = listener
        self._tick_s = tick_s
        self._max_start_failures = max_start_failures
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._history_size = history_size
        self._entities: dict[EntityKey, EntityRecord] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._started = False
        self._ids = itertools.count(1)

    # --- lifecycle of the autoscaler itself ---

    async def start(self) -> None:
        await self._backend.open()
        self._started = True
        now = self._clock.now()
        for entity in list(self._entities.values()):
            self._evaluate(entity, now)
        self._loop_task = asyncio.create_task(self._run(), name="zeroserve-autoscaler")

    async def stop(self) -> None:
        """Stop ticking, drain and stop every replica this autoscaler started, close the backend."""
        await self._stop_deciding()
        await asyncio.gather(*(self._shut_down(entity) for entity in self._entities.values()))
        await self.settle()
        await self._backend.close()

    async def _stop_deciding(self) -> None:
        self._started = False
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for timer in list(self._timers):
            timer.cancel()

    async def relinquish(self) -> None:
        """Stop deciding without stopping any replica (another gateway leads now and adopts them):
        the loop and timers end, starts in flight are cancelled, every entity is forgotten."""
        await self._stop_deciding()
        starting = [r.task for e in self._entities.values() for r in e.replicas.values()
                    if r.state is ReplicaState.STARTING and r.task is not None]
        for task in starting:
            task.cancel()
        await asyncio.gather(*starting, return_exceptions=True)
        self._entities.clear()
        if isinstance(self._backend, HandoverBackend):
            await self._backend.detach()
        else:
            await self._backend.close()

    async def adopt(self, replica: ReplicaInfo, pid: int | None) -> bool:
        """A ready replica of an applied entity, started by a previous leader, becomes this autoscaler's
        (before ``start``, so that the first decisions count it and start nothing it already is).
        False when the entity is not applied, the backend cannot adopt, or the replica is gone."""
        state = self._entities.get(replica.entity)
        if state is None or not isinstance(self._backend, HandoverBackend):
            return False
        if not await self._backend.adopt(replica, pid):
            return False
        record = ReplicaRecord(replica.replica_id, state.generation, state.spec,
                               ReplicaLifecycle(replica.replica_id), info=replica)
        record.lifecycle.handle(ReplicaEvent.PROBE_OK)
        state.replicas[replica.replica_id] = record
        state.ever_ready = True
        state.optimization = state.optimization or replica.optimization
        self._notify("replica_ready", replica)  # the router may know it already: adding is idempotent
        return True

    async def settle(self) -> None:
        """Wait until no start, drain or stop is in progress (tests, and orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                # One bad tick must not end autoscaling for every entity; the next tick retries.
                logger.exception("autoscaler tick failed")
            await self._clock.sleep(self._tick_s)

    async def tick(self) -> None:
        """One pass: decide and reconcile every entity, then probe the running replicas."""
        now = self._clock.now()
        for entity in list(self._entities.values()):
            self._evaluate(entity, now)
        # After the decisions, so that a slow probe delays the next tick, never this one's decisions.
        await self._check_health()

    # --- the control plane's side ---

    def apply(self, entity: EntityKey, spec: EntitySpec) -> None:
        """Create the entity or update its spec. A new replica template rolls the replicas; applying
        again also clears a failed state, so a re-deploy retries."""
        state = self._entities.get(entity)
        if state is None:
            state = EntityRecord(entity, spec, MetricsWindow(retention_s=spec.autoscaling.stable_window_s))
            state.history = deque(maxlen=self._history_size)
            self._entities[entity] = state
        else:
            if not spec.same_replica_template(state.spec):
                state.generation += 1
                state.ever_ready = False
                state.optimization = None
            state.spec = spec
            state.window.set_retention(spec.autoscaling.stable_window_s)
        state.failed_reason = None
        state.start_failures = 0
        state.next_start_at = 0.0
        if self._started:
            self._evaluate(state, self._clock.now())

    async def remove(self, entity: EntityKey) -> None:
        """Forget the entity: cancel starts, drain and stop its replicas."""
        state = self._entities.pop(entity, None)
        if state is None:
            raise NotFound(f"served entity {entity} does not exist")
        await self._shut_down(state)

    def status(self, entity: EntityKey) -> EntityStatus:
        return self._get(entity).status()

    def entities(self) -> list[EntityKey]:
        return list(self._entities)

    def replica_logs(self, entity: EntityKey) -> str:
        """The captured output of the entity's replicas, current ones and the last few gone ones."""
        state = self._get(entity)
        sections = []
        for replica_id in [*state.gone_replicas, *state.replicas]:
            live = state.replicas.get(replica_id)
            label = live.state.value if live is not None else "GONE"
            sections.append(f"--- replica {replica_id} ({label}) ---\n{self._backend.logs(replica_id)}")
        return "\n".join(sections)

    # --- the router's side ---

    def replicas(self, entity: EntityKey) -> list[ReplicaInfo]:
        """Ready replicas of the entity (any generation: old ones serve until they are drained)."""
        state = self._get(entity)
        return [r.info for r in state.replicas.values() if r.state is ReplicaState.READY and r.info]

    def report(self, entity: EntityKey, in_flight: int, queued: int, source: str = "router", *,
               arrivals: int | None = None, completions: int | None = None) -> None:
        """A concurrency sample from a router, with its cumulative counts of the entity's requests that
        arrived and completed when it keeps them; reports for unknown entities (just removed) are
        dropped."""
        state = self._entities.get(entity)
        if state is not None:
            state.window.report(self._clock.now(), in_flight, queued, source, arrivals=arrivals,
                                completions=completions)

    def poke(self, entity: EntityKey) -> None:
        """A request is waiting at an entity with no ready replica: decide now, not at the next tick."""
        state = self._get(entity)
        if state.failed_reason is not None:
            # The new waiter must hear the reason too, within a second, not after a queue timeout.
            self._notify("entity_failed", entity, state.failed_reason)
            return
        now = self._clock.now()
        state.window.poke(now)
        if self._started:
            self._evaluate(state, now)

    # --- decide and reconcile (synchronous) ---

    def _get(self, entity: EntityKey) -> EntityRecord:
        state = self._entities.get(entity)
        if state is None:
            raise NotFound(f"served entity {entity} does not exist")
        return state

    def _evaluate(self, entity: EntityRecord, now: float) -> None:
        scaling = entity.spec.autoscaling
        reading = entity.window.reading(now, scaling.stable_window_s, scaling.panic_window_s)
        fleet = Fleet(ready=len(entity.current(ReplicaState.READY)),
                      starting=len(entity.current(ReplicaState.STARTING)))
        decision, entity.policy = decide(reading, scaling, entity.policy, now, fleet,
                                         self._clock.wall() if scaling.prewarm else None)
        entity.window.clear_poke()
        if decision.changed:
            logger.info("%s: %s", entity.key, decision.reason)
            self._record(entity, now, decision.previous, decision.desired, decision.reason)
        self._reconcile(entity, now)

    def _reconcile(self, entity: EntityRecord, now: float) -> None:
        if entity.closing or self._entities.get(entity.key) is not entity:
            return  # removed (or shutting down) while a task was finishing
        desired = entity.policy.desired
        live = entity.current(*LIVE)
        if len(live) < desired and entity.failed_reason is None and now >= entity.next_start_at:
            for _ in range(desired - len(live)):
                self._start(entity)
        elif len(live) > desired:
            # Cancel starts before draining replicas that serve; newest first within each.
            starting = entity.current(ReplicaState.STARTING)[::-1]
            ready = entity.current(ReplicaState.READY)[::-1]
            for replica in (starting + ready)[: len(live) - desired]:
                self._retire(entity, replica)
        # Old-template replicas serve until the new ones are all up (or nothing is wanted at all).
        for replica in entity.outdated(ReplicaState.STARTING):
            self._retire(entity, replica)
        if len(entity.current(ReplicaState.READY)) >= desired:
            for replica in entity.outdated(ReplicaState.READY):
                self._retire(entity, replica)

    def _start(self, entity: EntityRecord) -> None:
        key = entity.key
        replica_id = f"{key.endpoint}-{key.served_entity}-{self._replica_prefix}{next(self._ids)}"
        replica = ReplicaRecord(replica_id, entity.generation, entity.spec, ReplicaLifecycle(replica_id))
        entity.replicas[replica_id] = replica
        replica.task = self._spawn(entity, self._run_start(entity, replica))

    def _retire(self, entity: EntityRecord, replica: ReplicaRecord) -> None:
        if replica.state is ReplicaState.STARTING:
            if replica.task is not None:
                replica.task.cancel()
        elif replica.state is ReplicaState.READY:
            replica.lifecycle.handle(ReplicaEvent.DRAIN)
            self._spawn(entity, self._run_drain(entity, replica))

    def _forget(self, entity: EntityRecord, replica: ReplicaRecord) -> None:
        entity.replicas.pop(replica.replica_id, None)
        entity.gone_replicas.append(replica.replica_id)
        if replica.info is not None:
            self._notify("replica_gone", replica.info)

    def _record(self, entity: EntityRecord, now: float, before: int, after: int, reason: str) -> None:
        entity.history.append(DecisionRecord(now, int(self._clock.wall() * 1000), before, after, reason))

    def _restart_backoff(self, entity: EntityRecord, now: float) -> float:
        # 1 s, 2 s, 4 s ... up to a minute, counting crashes of the last five minutes.
        recent = sum(1 for at in entity.crash_times if now - at < _CRASH_MEMORY_S)
        return min(self._backoff_max_s, self._backoff_base_s * 2 ** max(0, recent - 1))

    # --- the I/O, as tasks ---

    def _spawn(self, entity: EntityRecord, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        entity.tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            entity.tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                logger.error("%s: autoscaler task failed", entity.key, exc_info=task.exception())

        task.add_done_callback(done)
        return task

    async def _run_start(self, entity: EntityRecord, replica: ReplicaRecord) -> None:
        try:
            info = await self._backend.start_replica(entity.key, replica.spec, replica.replica_id)
        except asyncio.CancelledError:
            replica.lifecycle.handle(ReplicaEvent.STOPPED)
            entity.replicas.pop(replica.replica_id, None)
            entity.gone_replicas.append(replica.replica_id)
            raise
        except Exception as error:
            replica.lifecycle.handle(ReplicaEvent.START_FAILED)
            self._forget(entity, replica)
            self._start_failed(entity, replica, error)
            return
        replica.info = info
        replica.lifecycle.handle(ReplicaEvent.PROBE_OK)
        if replica.generation == entity.generation:
            entity.start_failures = 0
            entity.ever_ready = True
            entity.optimization = info.optimization
        self._notify("replica_ready", info)
        self._reconcile(entity, self._clock.now())

    def _start_failed(self, entity: EntityRecord, replica: ReplicaRecord, error: Exception) -> None:
        now = self._clock.now()
        if isinstance(error, ReplicaStartError):
            log_tail = error.log_tail
        else:
            log_tail = self._backend.logs(replica.replica_id)
        log_tail = log_tail[-_LOG_TAIL_CHARS:]
        if replica.generation != entity.generation:
            return  # an old template failing no longer matters
        entity.start_failures += 1
        desired = entity.policy.desired
        if entity.start_failures >= self._max_start_failures:
            entity.failed_reason = (f"{entity.start_failures} replica starts failed; last error: {error}"
                                    + (f"\nlog tail:\n{log_tail}" if log_tail else ""))
            self._record(entity, now, desired, desired, f"deployment failed, not retrying: {error}")
            logger.error("%s: %s", entity.key, entity.failed_reason)
            self._notify("entity_failed", entity.key, entity.failed_reason)
            return
        backoff = min(self._backoff_max_s, self._backoff_base_s * 2 ** (entity.start_failures - 1))
        entity.next_start_at = now + backoff
        self._record(entity, now, desired, desired,
                     f"replica {replica.replica_id} failed to start ({error}); retrying in {backoff:g} s")
        self._reconcile_later(entity, entity.next_start_at)

    def _reconcile_later(self, entity: EntityRecord, when: float) -> None:
        # A timer, not I/O: kept apart from the tasks settle() waits for, cancelled by stop().
        async def wake() -> None:
            await self._clock.sleep(when - self._clock.now())
            self._reconcile(entity, self._clock.now())

        timer = asyncio.create_task(wake())
        self._timers.add(timer)
        timer.add_done_callback(self._timers.discard)

    async def _run_drain(self, entity: EntityRecord, replica: ReplicaRecord) -> None:
        assert replica.info is not None
        try:
            if self._listener is not None:
                # The router stops sending to it and returns once its in-flight requests finished.
                async with asyncio.timeout(replica.spec.drain_timeout_s):
                    await self._listener.replica_draining(replica.info)
        except TimeoutError:
            logger.warning("%s: drain of %s timed out", entity.key, replica.replica_id)
        except Exception:
            logger.exception("%s: listener failed while draining %s", entity.key, replica.replica_id)
        finally:
            # Shielded: a replica asked to drain is stopped even if the drain itself is cancelled.
            await asyncio.shield(self._backend.stop_replica(replica.replica_id, replica.spec.drain_timeout_s))
            if replica.lifecycle.can(ReplicaEvent.STOPPED):
                replica.lifecycle.handle(ReplicaEvent.STOPPED)
            self._forget(entity, replica)

    async def _check_health(self) -> None:
        running = [(entity, replica) for entity in self._entities.values()
                   for replica in entity.replicas.values() if replica.state is ReplicaState.READY]
        if not running:
            return
        results = await asyncio.gather(*(self._backend.health(replica.replica_id) for _, replica in running),
                                       return_exceptions=True)
        now = self._clock.now()
        for (entity, replica), health in zip(running, results, strict=True):
            if replica.state is not ReplicaState.READY:
                continue  # it started draining while the probe ran
            if health is ReplicaHealth.HEALTHY:
                replica.unhealthy_probes = 0
                continue
            if health is not ReplicaHealth.EXITED:
                replica.unhealthy_probes += 1
                if replica.unhealthy_probes < _UNHEALTHY_LIMIT:
                    continue
                self._spawn(entity, self._backend.stop_replica(replica.replica_id, 0.0))
            self._replica_lost(entity, replica, now, "exited" if health is ReplicaHealth.EXITED
                               else f"failed {_UNHEALTHY_LIMIT} readiness probes")

    def _replica_lost(self, entity: EntityRecord, replica: ReplicaRecord, now: float, what: str) -> None:
        replica.lifecycle.handle(ReplicaEvent.EXITED)
        self._forget(entity, replica)
        entity.crash_times.append(now)
        backoff = self._restart_backoff(entity, now)
        entity.next_start_at = max(entity.next_start_at, now + backoff)
        desired = entity.policy.desired
        self._record(entity, now, desired, desired,
                     f"replica {replica.replica_id} {what} unexpectedly; replacing it in {backoff:g} s")
        logger.warning("%s: replica %s %s; replacing it in %g s",
                       entity.key, replica.replica_id, what, backoff)
        self._reconcile_later(entity, entity.next_start_at)

    async def _shut_down(self, entity: EntityRecord) -> None:
        entity.closing = True
        for replica in list(entity.replicas.values()):
            self._retire(entity, replica)
        # Only this entity's starts and drains: another entity's slow start must not hold up a removal.
        while entity.tasks:
            await asyncio.gather(*list(entity.tasks), return_exceptions=True)

    def _notify(self, method: str, *args: Any) -> None:
        if self._listener is None:
            return
        try:
            getattr(self._listener, method)(*args)
        except Exception:
            logger.exception("replica listener %s failed", method)
