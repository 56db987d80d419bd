"""The activator's state machine: per served entity, the ready replicas and a bounded FIFO of waiters.

Every method is synchronous and does no I/O: it updates state and *returns the actions* the async shell
(``router.dataplane.activator``) must carry out — wake a waiter with its replica (``Dispatch``), fail a waiter
(``Reject``), ask the autoscaler for capacity (``Poke``), report a replica drained (``Drained``), start
health-checking an ejected replica (``Eject``). This is httpcore's connection-pool shape: because no
method awaits, each runs atomically on the event loop, and tests drive it with a fake clock.

Invariants: a replica never has more than ``capacity`` requests in flight; waiters of one entity are
served in arrival order (a waiter that must avoid a replica — a retry — may be passed by later ones);
a request only waits when no replica has room.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from urllib.parse import urlsplit

from autoscaler.types import EntityKey, ReplicaInfo
from runtime.errors import NoCapacity, QueueFull, ZeroserveError


class EntityRemoved(NoCapacity):
    """The entity a request waited for left the routing table; the request may be routed again."""


class ReplicaSlot:
    """The router's view of one replica: where it is and how busy."""

    __slots__ = (
        "capacity",
        "consecutive_failures",
        "draining",
        "ejected",
        "host",
        "in_flight",
        "info",
        "port",
        "queue",
        "removed",
        "replica_id",
        "unix_socket",
    )

    def __init__(self, info: ReplicaInfo, queue: EntityQueue) -> None:
        if info.capacity < 1:
            raise ValueError(f"replica {info.replica_id} has capacity {info.capacity}; it must be >= 1")
        parts = urlsplit(info.url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"replica {info.replica_id} URL {info.url!r} must be http://host:port")
        self.info = info
        self.replica_id = info.replica_id
        self.host: str = parts.hostname
        self.port: int = parts.port
        self.unix_socket = info.unix_socket  # requests go there when set (a local replica)
        self.capacity = info.capacity
        self.queue = queue
        self.in_flight = 0
        self.consecutive_failures = 0
        self.draining = False
        self.ejected = False
        self.removed = False

    @property
    def accepting(self) -> bool:
        return not (self.draining or self.ejected or self.removed)

    def __repr__(self) -> str:
        flags = "".join(f" {name}" for name in ("draining", "ejected", "removed") if getattr(self, name))
        return f"<ReplicaSlot {self.replica_id} {self.in_flight}/{self.capacity}{flags}>"


_NO_EXCLUSIONS: frozenset[str] = frozenset()


class Waiter:
    """One request waiting for (or holding) a replica slot."""

    __slots__ = ("deadline", "entity", "error", "exclude", "future", "seq", "slot")

    def __init__(self, entity: EntityKey, deadline: float, exclude: frozenset[str] = frozenset()) -> None:
        self.entity = entity
        self.deadline = deadline  # monotonic seconds
        self.exclude = exclude  # replica ids this request must not go to (the one that just failed it)
        self.seq = 0
        self.slot: ReplicaSlot | None = None  # set when dispatched
        self.error: ZeroserveError | None = None  # set when rejected
        self.future: object = None  # the async shell's wake-up handle; the core never touches it


class EntityQueue:
    """The state of one served entity."""

    __slots__ = ("arrivals", "completions", "entity", "failed_reason", "in_flight", "last_poke", "ready",
                 "replicas", "waiters")

    def __init__(self, entity: EntityKey) -> None:
        self.entity = entity
        self.replicas: dict[str, ReplicaSlot] = {}
        self.ready: list[ReplicaSlot] = []  # the accepting replicas, rebuilt when one changes state
        self.waiters: dict[int, Waiter] = {}  # insertion-ordered: FIFO with O(1) removal
        self.in_flight = 0
        # Requests that came for the entity and requests a replica finished, since this process began
        # (per gateway: each reports its own, and the autoscaler's window adds them up). They give
        # the autoscaler the arrival rate and, with the in-flight level, the service time.
        self.arrivals = 0
        self.completions = 0
        self.failed_reason: str | None = None
        self.last_poke = float("-inf")

    def rebuild(self) -> None:
        self.ready = [slot for slot in self.replicas.values() if slot.accepting]


@dataclass(frozen=True, slots=True)
class Dispatch:
    waiter: Waiter
    slot: ReplicaSlot


@dataclass(frozen=True, slots=True)
class Reject:
    waiter: Waiter
    error: ZeroserveError


@dataclass(frozen=True, slots=True)
class Poke:
    entity: EntityKey


@dataclass(frozen=True, slots=True)
class Drained:
    slot: ReplicaSlot


@dataclass(frozen=True, slots=True)
class Eject:
    slot: ReplicaSlot


Action = Dispatch | Reject | Poke | Drained | Eject


class Balancer:
    """Least outstanding requests over power-of-two random choices, with an activator queue."""

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        eject_after: int = 2,
        poke_interval_s: float = 0.1,
    ) -> None:
        self._rng = rng or random.Random()
        self._eject_after = eject_after
        # A burst of queued requests pokes the autoscaler once per interval, not once per request.
        self._poke_interval_s = poke_interval_s
        self._queues: dict[EntityKey, EntityQueue] = {}
        self._replicas: dict[str, ReplicaSlot] = {}
        self._seq = itertools.count(1)

    # -- requests ---------------------------------------------------------------------------------

    def request(self, waiter: Waiter, now: float, max_queue: int) -> list[Action]:
        """Place a new request: dispatch it at once, queue it, or reject it.

        Afterwards exactly one of ``waiter.slot`` (dispatched), ``waiter.error`` (rejected) is set, or
        the waiter is queued and a later ``Dispatch``/``Reject`` action names it.
        """
        queue = self._queue(waiter.entity)
        queue.arrivals += 1
        if not queue.waiters:
            slot = self._pick(queue, waiter.exclude)
            if slot is not None:
                self._assign_slot(waiter, slot)
                return []
        actions: list[Action] = []
        if queue.failed_reason is not None:
            waiter.error = NoCapacity(
                f"Served entity '{waiter.entity.served_entity}' failed to deploy: {queue.failed_reason}"
            )
            self._maybe_poke(queue, now, actions)  # the autoscaler may retry a failed start
            return actions
        if len(queue.waiters) >= max_queue:
            waiter.error = QueueFull(
                f"Too many requests waiting for served entity '{waiter.entity.served_entity}' "
                f"({len(queue.waiters)} queued); retry later."
            )
            return actions
        waiter.seq = next(self._seq)
        queue.waiters[waiter.seq] = waiter
        self._maybe_poke(queue, now, actions)
        return actions

    def try_dispatch(self, entity: EntityKey) -> ReplicaSlot | None:
        """A slot of ``entity`` for a request that must not wait: taken when a replica has room and no
        request is queued before this one (FIFO), else None and nothing changes (the request then
        goes through ``request``, which queues it and pokes the autoscaler)."""
        queue = self._queues.get(entity)
        if queue is None or queue.waiters:
            return None
        slot = self._pick(queue, _NO_EXCLUSIONS)
        if slot is not None:
            queue.arrivals += 1
            _take(slot)
        return slot

    def give_back(self, slot: ReplicaSlot) -> list[Action]:
        """A slot from ``try_dispatch`` that carried no request after all: free it, counting neither a
        success nor a failure of its replica."""
        slot.queue.arrivals -= 1  # it carried no request: not an arrival after all
        return self._release(slot)

    def cancel(self, waiter: Waiter) -> list[Action]:
        """The request went away (client gone, task cancelled, error): forget it, free its slot."""
        queue = self._queue(waiter.entity)
        if queue.waiters.pop(waiter.seq, None) is not None:
            return self._assign(queue)
        if waiter.slot is not None:
            slot, waiter.slot = waiter.slot, None
            return self._release(slot)
        return []

    def release(self, slot: ReplicaSlot, *, failed: bool = False) -> list[Action]:
        """A request to ``slot`` finished; ``failed`` means the replica did not answer (transport error
        or timeout), which counts toward ejecting it."""
        slot.queue.completions += 1
        actions = self._release(slot)
        if failed:
            slot.consecutive_failures += 1
            if slot.consecutive_failures >= self._eject_after and not slot.ejected and not slot.removed:
                slot.ejected = True
                slot.queue.rebuild()
                actions.append(Eject(slot))
        else:
            slot.consecutive_failures = 0
        return actions

    def expire(self, waiter: Waiter, timeout_s: float) -> list[Action]:
        """The waiter's queue timeout fired: reject it if it is still queued."""
        queue = self._queue(waiter.entity)
        if queue.waiters.pop(waiter.seq, None) is None:
            return []
        return [_reject(waiter, self._timeout_error(waiter, timeout_s))]

    # -- replicas (the ReplicaListener events) ------------------------------------------------------

    def add_replica(self, info: ReplicaInfo) -> list[Action]:
        queue = self._queue(info.entity)
        existing = self._replicas.get(info.replica_id)
        if existing is not None and not existing.removed:
            # Ready again (e.g. re-announced after a drain was cancelled): accept traffic again.
            existing.draining = False
            existing.ejected = False
            existing.consecutive_failures = 0
        else:
            slot = ReplicaSlot(info, queue)
            queue.replicas[info.replica_id] = slot
            self._replicas[info.replica_id] = slot
        queue.failed_reason = None
        queue.rebuild()
        return self._assign(queue)

    def drain_replica(self, replica_id: str) -> tuple[ReplicaSlot | None, list[Action]]:
        slot = self._replicas.get(replica_id)
        if slot is None:
            return None, []
        slot.draining = True
        slot.queue.rebuild()
        return slot, [Drained(slot)] if slot.in_flight == 0 else []

    def remove_replica(self, replica_id: str) -> list[Action]:
        slot = self._replicas.pop(replica_id, None)
        if slot is None:
            return []
        queue = slot.queue
        slot.removed = True
        del queue.replicas[replica_id]
        queue.rebuild()
        actions: list[Action] = [Drained(slot)]  # nobody waits for a drain of a replica that is gone
        if queue.waiters and not queue.ready:
            actions.append(Poke(queue.entity))
        return actions

    def readmit(self, slot: ReplicaSlot) -> list[Action]:
        """An ejected replica passed its health check."""
        if slot.removed or not slot.ejected:
            return []
        slot.ejected = False
        slot.consecutive_failures = 0
        slot.queue.rebuild()
        return self._assign(slot.queue)

    def fail_entity(self, entity: EntityKey, reason: str) -> list[Action]:
        """The entity cannot start replicas: every waiter gets 503 with ``reason``; later requests too,
        until a replica of it becomes ready."""
        queue = self._queue(entity)
        queue.failed_reason = reason
        error = NoCapacity(f"Served entity '{entity.served_entity}' failed to deploy: {reason}")
        actions: list[Action] = [_reject(waiter, error) for waiter in queue.waiters.values()]
        queue.waiters.clear()
        return actions

    def forget_entity(self, entity: EntityKey, reason: str) -> list[Action]:
        """The entity was removed from the routing table: reject its waiters, drop its state once idle."""
        queue = self._queues.get(entity)
        if queue is None:
            return []
        error = EntityRemoved(f"Served entity '{entity.served_entity}' was removed: {reason}")
        actions: list[Action] = [_reject(waiter, error) for waiter in queue.waiters.values()]
        queue.waiters.clear()
        if not queue.replicas and queue.in_flight == 0:
            del self._queues[entity]
        return actions

    # -- reading state (metrics, autoscaler reports, repr) ------------------------------------------

    def entities(self) -> list[EntityKey]:
        return list(self._queues)

    def concurrency(self, entity: EntityKey) -> tuple[int, int]:
        """(in flight, queued) for ``entity``: what the autoscaler's windows average."""
        queue = self._queues.get(entity)
        if queue is None:
            return 0, 0
        return queue.in_flight, len(queue.waiters)

    def counts(self, entity: EntityKey) -> tuple[int, int]:
        """(arrivals, completions) of ``entity`` since this balancer began: cumulative, for the
        autoscaler's rates."""
        queue = self._queues.get(entity)
        if queue is None:
            return 0, 0
        return queue.arrivals, queue.completions

    def replicas(self, entity: EntityKey) -> list[ReplicaSlot]:
        queue = self._queues.get(entity)
        return list(queue.replicas.values()) if queue is not None else []

    def failed_reason(self, entity: EntityKey) -> str | None:
        queue = self._queues.get(entity)
        return queue.failed_reason if queue is not None else None

    def __repr__(self) -> str:
        parts = []
        for entity, queue in self._queues.items():
            failed = f" failed={queue.failed_reason!r}" if queue.failed_reason is not None else ""
            parts.append(
                f"{entity}: replicas={len(queue.replicas)} ready={len(queue.ready)} "
                f"in_flight={queue.in_flight} queued={len(queue.waiters)}{failed}"
            )
        return f"<Balancer {'; '.join(parts) or 'empty'}>"

    # -- internals ------------------------------------------------------------------------------------

    def _queue(self, entity: EntityKey) -> EntityQueue:
        queue = self._queues.get(entity)
        if queue is None:
            queue = self._queues[entity] = EntityQueue(entity)
        return queue

    def _pick(self, queue: EntityQueue, exclude: frozenset[str]) -> ReplicaSlot | None:
        """Power of two choices: of two random replicas with room, the one with fewer in flight."""
        ready = queue.ready
        if len(ready) == 1:  # the common case at small scale: no allocation, no random draw
            only = ready[0]
            if only.in_flight < only.capacity and only.replica_id not in exclude:
                return only
            return None
        candidates = [
            slot for slot in ready if slot.in_flight < slot.capacity and slot.replica_id not in exclude
        ]
        count = len(candidates)
        if count <= 1:
            return candidates[0] if candidates else None
        first = self._rng.randrange(count)
        second = self._rng.randrange(count - 1)
        if second >= first:
            second += 1
        a, b = candidates[first], candidates[second]
        return a if a.in_flight <= b.in_flight else b

    def _assign_slot(self, waiter: Waiter, slot: ReplicaSlot) -> None:
        _take(slot)
        waiter.slot = slot

    def _assign(self, queue: EntityQueue) -> list[Action]:
        """Hand free replica slots to waiters, oldest first."""
        if not queue.waiters or not queue.ready:
            return []
        dispatched: list[Dispatch] = []
        for waiter in queue.waiters.values():
            slot = self._pick(queue, waiter.exclude)
            if slot is None:
                if not waiter.exclude:
                    break  # no replica has room at all
                continue  # only the replica this retry must avoid has room; serve later waiters
            self._assign_slot(waiter, slot)
            dispatched.append(Dispatch(waiter, slot))
        for action in dispatched:  # removed after the loop: a dict must not change while iterated
            del queue.waiters[action.waiter.seq]
        return list(dispatched)

    def _release(self, slot: ReplicaSlot) -> list[Action]:
        slot.in_flight -= 1
        slot.queue.in_flight -= 1
        actions = self._assign(slot.queue)
        if slot.in_flight == 0 and (slot.draining or slot.removed):
            actions.append(Drained(slot))
        return actions

    def _maybe_poke(self, queue: EntityQueue, now: float, actions: list[Action]) -> None:
        if len(queue.waiters) <= 1 or now - queue.last_poke >= self._poke_interval_s:
            queue.last_poke = now
            actions.append(Poke(queue.entity))

    def _timeout_error(self, waiter: Waiter, timeout_s: float | None) -> NoCapacity:
        waited = f" within {timeout_s:g} s" if timeout_s is not None else ""
        return NoCapacity(
            f"No replica of served entity '{waiter.entity.served_entity}' became available{waited}; "
            "it may be scaling up from zero, retry later.",
            headers={"Retry-After": "1"},
        )


def _take(slot: ReplicaSlot) -> None:
    """One more request in flight on ``slot`` (and its entity)."""
    slot.in_flight += 1
    slot.queue.in_flight += 1


def _reject(waiter: Waiter, error: ZeroserveError) -> Reject:
    waiter.error = error
    return Reject(waiter, error)
