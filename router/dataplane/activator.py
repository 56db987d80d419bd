"""The activator: the async shell around the balancer's state machine (``router.dataplane.balancer``).

It is the router's ``ReplicaListener``: the autoscaler's backends tell it when replicas become ready,
start draining, die, or cannot be started, and it holds requests that find no replica with room until
one has. Each operation calls one synchronous ``Balancer`` method, which returns actions; the actions
(wake a waiter, poke the autoscaler, start a health check) are carried out afterwards. When a waiting
request ends for any reason — timeout, client gone, cancellation — its waiter is cancelled in the
balancer, which hands a slot it may already hold to the next waiter.

All calls must come from the event loop the activator runs on (the autoscaler's local backend runs in
the gateway's loop); the balancer's methods never await, so each is atomic without a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from autoscaler.types import EntityKey, ReplicaInfo
from router.dataplane.balancer import (
    Action,
    Balancer,
    Dispatch,
    Drained,
    Eject,
    Poke,
    Reject,
    ReplicaSlot,
    Waiter,
)
from runtime.errors import NoCapacity, ZeroserveError

logger = logging.getLogger(__name__)


class ScaleRequester(Protocol):
    """What the activator needs from the autoscaler (``autoscaler.Autoscaler`` satisfies it)."""

    def poke(self, entity: EntityKey) -> Any:
        """Requests are waiting for ``entity``: evaluate its scale now, not at the next tick."""

    def report(self, entity: EntityKey, in_flight: int, queued: int, *, arrivals: int | None = None,
               completions: int | None = None) -> Any:
        """One concurrency sample for ``entity``'s stable and panic windows, with this router's
        cumulative counts of the entity's requests that arrived and completed."""


class Clock(Protocol):
    """The autoscaler's clock (``autoscaler.backend.Clock``): what the activator needs of it."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


HealthCheck = Callable[[ReplicaInfo], Awaitable[bool]]


class ClientGone(Exception):
    """The client disconnected while its request waited in the queue; nothing is left to answer."""


class Activator:
    """Holds, balances and dispatches requests over the replicas of every served entity."""

    def __init__(
        self,
        scaler: ScaleRequester | None = None,
        *,
        health_check: HealthCheck | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        report_interval_s: float = 1.0,
        health_interval_s: float = 0.5,
    ) -> None:
        self._balancer = Balancer(rng=rng)
        self._scaler = scaler
        self._health_check = health_check
        # Queue deadlines and their timers both run on ``clock`` when one is given (a test's fake clock
        # then decides when a waiter times out); on the loop's own timer otherwise, which costs a waiting
        # request no task.
        self._injected = clock
        self._clock: Callable[[], float] = clock.now if clock is not None else time.monotonic
        self._report_interval_s = report_interval_s
        self._health_interval_s = health_interval_s
        self._drained: dict[str, asyncio.Event] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._reporter: asyncio.Task[None] | None = None
        self._closed = False
        # Called with a replica's slot once it has drained (the data plane closes its idle connections).
        self.on_drained: Callable[[ReplicaSlot], None] | None = None

    def set_scaler(self, scaler: ScaleRequester | None) -> None:
        self._scaler = scaler

    def set_health_check(self, health_check: HealthCheck | None) -> None:
        self._health_check = health_check

    async def start(self) -> None:
        if self._reporter is None:
            self._reporter = asyncio.create_task(self._report_loop(), name="activator-reporter")

    async def aclose(self) -> None:
        """Reject every waiter and stop background work."""
        self._closed = True
        for entity in self._balancer.entities():
            self._run(self._balancer.forget_entity(entity, "the router is shutting down"))
        tasks = [*self._background, *([self._reporter] if self._reporter else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background.clear()
        self._reporter = None

    # -- the request path -------------------------------------------------------------------------

    async def acquire(
        self,
        entity: EntityKey,
        *,
        queue_timeout_s: float,
        max_queue: int,
        exclude: frozenset[str] = frozenset(),
        disconnected: Callable[[], Awaitable[Any]] | None = None,
    ) -> ReplicaSlot:
        """A replica slot of ``entity``, waiting in its queue if none has room.

        Raises ``QueueFull`` (429), ``NoCapacity`` (503: timed out, entity failed) or ``ClientGone``
        (``disconnected()`` returned first). The caller must ``release`` the slot exactly once.
        """
        if self._closed:
            raise NoCapacity("The router is shutting down.")
        waiter = Waiter(entity, self._clock() + queue_timeout_s, exclude)
        actions = self._balancer.request(waiter, self._clock(), max_queue)
        if actions:
            self._run(actions)
        if waiter.slot is not None:
            return waiter.slot  # the fast path: a replica had room, nothing awaited
        if waiter.error is not None:
            raise waiter.error
        return await self._wait(waiter, queue_timeout_s, disconnected)

    def try_acquire(self, entity: EntityKey) -> ReplicaSlot | None:
        """A replica slot of ``entity`` now, or None when the request would have to wait (or be
        rejected): then nothing happened, and ``acquire`` decides. Release the slot as ``acquire``'s."""
        if self._closed:
            return None
        return self._balancer.try_dispatch(entity)

    def give_back(self, slot: ReplicaSlot) -> None:
        """A slot from ``try_acquire`` that was not used after all (see ``Balancer.give_back``)."""
        actions = self._balancer.give_back(slot)
        if actions:
            self._run(actions)

    async def _wait(
        self,
        waiter: Waiter,
        queue_timeout_s: float,
        disconnected: Callable[[], Awaitable[Any]] | None,
    ) -> ReplicaSlot:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter.future = future
        timer: asyncio.TimerHandle | asyncio.Task[None]
        if self._injected is None:
            timer = loop.call_later(queue_timeout_s, self._expire, waiter, queue_timeout_s)
        else:
            timer = asyncio.ensure_future(self._expire_on_clock(self._injected, waiter, queue_timeout_s))
        watcher = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        try:
            if watcher is None:
                await future
            else:
                await asyncio.wait((future, watcher), return_when=asyncio.FIRST_COMPLETED)
                if not future.done():
                    raise ClientGone()
        except BaseException:
            # Cancelled, client gone, or anything else: leave the queue, and if a slot was handed to
            # this waiter in the meantime, pass it on to the next one.
            self._run(self._balancer.cancel(waiter))
            raise
        finally:
            timer.cancel()
            if watcher is not None and not watcher.done():
                watcher.cancel()
        if waiter.slot is not None:
            return waiter.slot
        if waiter.error is not None:
            raise waiter.error
        raise NoCapacity("request was woken without a replica")  # unreachable by the balancer's contract

    def release(self, slot: ReplicaSlot, *, failed: bool = False) -> None:
        """The request on ``slot`` is done; ``failed``: the replica did not answer (it may be ejected)."""
        actions = self._balancer.release(slot, failed=failed)
        if actions:
            self._run(actions)

    def _expire(self, waiter: Waiter, queue_timeout_s: float) -> None:
        self._run(self._balancer.expire(waiter, queue_timeout_s))

    async def _expire_on_clock(self, clock: Clock, waiter: Waiter, queue_timeout_s: float) -> None:
        await clock.sleep(queue_timeout_s)
        self._expire(waiter, queue_timeout_s)

    # -- ReplicaListener ----------------------------------------------------------------------------

    def replica_ready(self, replica: ReplicaInfo) -> None:
        logger.info("replica %s of %s ready at %s", replica.replica_id, replica.entity, replica.url)
        self._run(self._balancer.add_replica(replica))

    async def replica_draining(self, replica: ReplicaInfo) -> None:
        slot, actions = self._balancer.drain_replica(replica.replica_id)
        if slot is None:
            return
        drained = self._drained.setdefault(replica.replica_id, asyncio.Event())
        self._run(actions)
        try:
            await drained.wait()
        finally:
            self._drained.pop(replica.replica_id, None)
        if self.on_drained is not None:
            self.on_drained(slot)

    def replica_gone(self, replica: ReplicaInfo) -> None:
        logger.info("replica %s of %s gone", replica.replica_id, replica.entity)
        self._run(self._balancer.remove_replica(replica.replica_id))

    def entity_failed(self, entity: EntityKey, reason: str) -> None:
        logger.warning("served entity %s failed: %s", entity, reason)
        self._run(self._balancer.fail_entity(entity, reason))

    def forget_entities(self, entities: Iterable[EntityKey], reason: str) -> None:
        """The entities left the routing table: their waiters get 503 now."""
        for entity in entities:
            self._run(self._balancer.forget_entity(entity, reason))

    # -- state for metrics and the autoscaler --------------------------------------------------------

    def concurrency(self, entity: EntityKey) -> tuple[int, int]:
        return self._balancer.concurrency(entity)

    def entities(self) -> list[EntityKey]:
        return self._balancer.entities()

    def replicas(self, entity: EntityKey) -> list[ReplicaSlot]:
        return self._balancer.replicas(entity)

    def failed_reason(self, entity: EntityKey) -> str | None:
        return self._balancer.failed_reason(entity)

    def __repr__(self) -> str:
        return f"<Activator {self._balancer!r}>"

    # -- carrying out actions -----------------------------------------------------------------------

    def _run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Dispatch | Reject):
                future = action.waiter.future
                if isinstance(future, asyncio.Future) and not future.done():
                    future.set_result(None)
            elif isinstance(action, Poke):
                self._poke(action.entity)
            elif isinstance(action, Drained):
                event = self._drained.get(action.slot.replica_id)
                if event is not None:
                    event.set()
            elif isinstance(action, Eject):
                logger.warning("replica %s failed twice in a row: ejected until healthy", action.slot)
                self._spawn(self._probe_until_healthy(action.slot))

    def _poke(self, entity: EntityKey) -> None:
        scaler = self._scaler
        if scaler is None:
            return
        try:
            self._report(scaler, entity)
            self._settle(scaler.poke(entity))
        except ZeroserveError as exc:  # e.g. the autoscaler does not (or no longer) know the entity
            logger.warning("poking the autoscaler for %s failed: %s", entity, exc.message)
        except Exception:  # the autoscaler's trouble must not fail the request that poked it
            logger.exception("poking the autoscaler for %s failed", entity)

    def _report(self, scaler: ScaleRequester, entity: EntityKey) -> None:
        in_flight, queued = self._balancer.concurrency(entity)
        arrivals, completions = self._balancer.counts(entity)
        self._settle(scaler.report(entity, in_flight, queued, arrivals=arrivals, completions=completions))

    def _settle(self, result: object) -> None:
        # The autoscaler may implement poke/report as coroutines; run them without blocking the request.
        if inspect.isawaitable(result):
            self._spawn(result)

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _probe_until_healthy(self, slot: ReplicaSlot) -> None:
        delay = self._health_interval_s
        while not slot.removed and slot.ejected:
            await asyncio.sleep(delay)
            healthy = False
            if self._health_check is None:
                healthy = True  # nothing can probe it: give it another chance after the delay
            else:
                try:
                    healthy = await self._health_check(slot.info)
                except Exception:
                    healthy = False
            if healthy:
                logger.info("replica %s passed its health check: back in rotation", slot)
                self._run(self._balancer.readmit(slot))
                return
            delay = min(delay * 2, 5.0)

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self._report_interval_s)
            scaler = self._scaler
            if scaler is None:
                continue
            for entity in self._balancer.entities():
                try:
                    self._report(scaler, entity)
                except Exception:
                    logger.exception("reporting concurrency of %s failed", entity)
