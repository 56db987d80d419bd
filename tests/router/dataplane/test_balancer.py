"""The activator's state machine, driven synchronously with fake replicas and a fake clock."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

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
from runtime.errors import NoCapacity, QueueFull

A = EntityKey("ep", "a")
B = EntityKey("ep", "b")


def replica(name: str, capacity: int = 2, entity: EntityKey = A, port: int = 9000) -> ReplicaInfo:
    return ReplicaInfo(replica_id=name, entity=entity, url=f"http://127.0.0.1:{port}", capacity=capacity)


class Harness:
    """A balancer plus a fake clock; records every action it returns."""

    def __init__(self, seed: int = 7) -> None:
        self.balancer = Balancer(rng=random.Random(seed), poke_interval_s=0.1)
        self.now = 100.0
        self.actions: list[Action] = []

    def request(
        self,
        entity: EntityKey = A,
        *,
        timeout: float = 10.0,
        max_queue: int = 100,
        exclude: frozenset[str] = frozenset(),
    ) -> Waiter:
        waiter = Waiter(entity, self.now + timeout, exclude)
        self.actions += self.balancer.request(waiter, self.now, max_queue)
        return waiter

    def do(self, actions: list[Action]) -> list[Action]:
        self.actions += actions
        return actions

    def take(self, kind: type) -> list[Action]:
        taken = [action for action in self.actions if isinstance(action, kind)]
        self.actions = [action for action in self.actions if not isinstance(action, kind)]
        return taken


def dispatched(actions: list[Action]) -> list[tuple[Waiter, str]]:
    return [(action.waiter, action.slot.replica_id) for action in actions if isinstance(action, Dispatch)]


def test_request_with_room_is_dispatched_at_once_without_poking() -> None:
    h = Harness()
    h.do(h.balancer.add_replica(replica("r1")))
    waiter = h.request()
    assert waiter.slot is not None and waiter.slot.replica_id == "r1"
    assert waiter.error is None
    assert h.actions == []
    assert h.balancer.concurrency(A) == (1, 0)


def test_request_at_zero_queues_and_pokes_once_per_interval() -> None:
    h = Harness()
    first = h.request()
    assert first.slot is None and first.error is None
    assert h.take(Poke) == [Poke(A)]
    h.request()
    h.now += 0.05
    h.request()
    assert h.take(Poke) == []  # a burst pokes once per interval, not once per request
    h.now += 0.1
    h.request()
    assert h.take(Poke) == [Poke(A)]
    assert h.balancer.concurrency(A) == (0, 4)


def test_waiters_are_dispatched_in_arrival_order_as_capacity_appears() -> None:
    h = Harness()
    waiters = [h.request() for _ in range(5)]
    ready = h.balancer.add_replica(replica("r1", capacity=2))
    assert [w for w, _ in dispatched(ready)] == waiters[:2]
    slot = waiters[0].slot
    assert slot is not None
    assert [w for w, _ in dispatched(h.balancer.release(slot))] == [waiters[2]]
    assert [w for w, _ in dispatched(h.balancer.release(slot))] == [waiters[3]]
    assert h.balancer.concurrency(A) == (2, 1)


def test_new_request_does_not_overtake_queued_ones() -> None:
    h = Harness()
    queued = h.request()
    h.balancer.add_replica(replica("r1", capacity=1))
    assert queued.slot is not None
    late = h.request()
    assert late.slot is None  # r1 is full; queued behind nobody, but no room
    h.balancer.release(queued.slot)
    assert late.slot is not None


def test_try_dispatch_takes_a_free_slot_only_when_nobody_waits_before_it() -> None:
    h = Harness()
    assert h.balancer.try_dispatch(A) is None  # an entity never seen: nothing is created or poked
    assert h.actions == [] and h.balancer.entities() == []
    h.balancer.add_replica(replica("r1", capacity=1))
    slot = h.balancer.try_dispatch(A)
    assert slot is not None and slot.in_flight == 1 and slot.queue.in_flight == 1
    assert h.balancer.try_dispatch(A) is None  # full
    queued = h.request()  # waits for r1
    assert queued.slot is None
    h.balancer.add_replica(replica("r2", capacity=1))  # r2 goes to the queued request at once
    assert queued.slot is not None and queued.slot.replica_id == "r2"
    second = h.request()
    assert h.balancer.try_dispatch(A) is None  # FIFO: a request is queued before this one
    assert dispatched(h.balancer.release(slot)) == [(second, "r1")]


def test_a_slot_given_back_counts_neither_success_nor_failure() -> None:
    h = Harness()
    h.balancer.add_replica(replica("r1", capacity=1))
    slot = h.request().slot
    assert slot is not None
    h.balancer.release(slot, failed=True)
    unused = h.balancer.try_dispatch(A)
    assert unused is slot
    waiter = h.request()  # r1 is full: it waits
    assert dispatched(h.balancer.give_back(unused)) == [(waiter, "r1")]
    assert slot.consecutive_failures == 1  # a release would have reset it, a failure raised it


@dataclass
class CapacityCase:
    id: str
    capacities: list[int]
    requests: int
    expect_in_flight: int
    expect_queued: int


CAPACITY_CASES = [
    CapacityCase("one replica C=4, 10 requests", [4], 10, 4, 6),
    CapacityCase("three replicas C=2, 5 requests", [2, 2, 2], 5, 5, 0),
    CapacityCase("three replicas C=2, 9 requests", [2, 2, 2], 9, 6, 3),
    CapacityCase("mixed C=1 and C=3, 4 requests", [1, 3], 4, 4, 0),
]


@pytest.mark.parametrize("case", CAPACITY_CASES, ids=[case.id for case in CAPACITY_CASES])
def test_no_replica_ever_gets_more_than_its_capacity(case: CapacityCase) -> None:
    h = Harness()
    for index, capacity in enumerate(case.capacities):
        h.balancer.add_replica(replica(f"r{index}", capacity=capacity))
    for _ in range(case.requests):
        h.request()
    assert h.balancer.concurrency(A) == (case.expect_in_flight, case.expect_queued)
    for slot in h.balancer.replicas(A):
        assert slot.in_flight <= slot.capacity


def test_capacity_holds_under_random_arrivals_and_releases() -> None:
    h = Harness(seed=3)
    rng = random.Random(11)
    for index in range(3):
        h.balancer.add_replica(replica(f"r{index}", capacity=3))
    holding: list[ReplicaSlot] = []
    for _ in range(2000):
        if holding and rng.random() < 0.5:
            slot = holding.pop(rng.randrange(len(holding)))
            actions = h.balancer.release(slot)
        else:
            waiter = h.request()
            actions = []
            if waiter.slot is not None:
                holding.append(waiter.slot)
        holding += [action.slot for action in actions if isinstance(action, Dispatch)]
        for slot in h.balancer.replicas(A):
            assert 0 <= slot.in_flight <= slot.capacity
        in_flight, queued = h.balancer.concurrency(A)
        assert in_flight == len(holding)
        assert queued == 0 or in_flight == 9  # nobody waits while a replica has room


def test_power_of_two_choices_prefers_the_less_loaded_replica() -> None:
    h = Harness()
    h.balancer.add_replica(replica("busy", capacity=8))
    h.balancer.add_replica(replica("idle", capacity=8))
    busy = next(slot for slot in h.balancer.replicas(A) if slot.replica_id == "busy")
    busy.in_flight = 5
    picks = [h.request().slot for _ in range(5)]
    assert all(slot is not None and slot.replica_id == "idle" for slot in picks)


def test_cancelled_waiter_leaves_the_queue_and_keeps_the_order() -> None:
    h = Harness()
    waiters = [h.request() for _ in range(3)]
    assert h.balancer.cancel(waiters[1]) == []
    actions = h.balancer.add_replica(replica("r1", capacity=5))
    assert [w for w, _ in dispatched(actions)] == [waiters[0], waiters[2]]
    assert h.balancer.concurrency(A) == (2, 0)


def test_cancelling_a_dispatched_waiter_passes_its_slot_to_the_next() -> None:
    h = Harness()
    first, second = h.request(), h.request()
    h.balancer.add_replica(replica("r1", capacity=1))
    assert first.slot is not None and second.slot is None
    # The first request was woken but cancelled before it could use the slot.
    actions = h.balancer.cancel(first)
    assert dispatched(actions) == [(second, "r1")]
    assert h.balancer.concurrency(A) == (1, 0)
    assert h.balancer.cancel(first) == []  # idempotent


@dataclass
class QueueLimitCase:
    id: str
    max_queue: int
    requests: int
    expect_rejected: int


QUEUE_LIMIT_CASES = [
    QueueLimitCase("queue of 3 takes 3", 3, 3, 0),
    QueueLimitCase("queue of 3 rejects the 4th and 5th", 3, 5, 2),
    QueueLimitCase("queue of 0 rejects at once", 0, 2, 2),
]


@pytest.mark.parametrize("case", QUEUE_LIMIT_CASES, ids=[case.id for case in QUEUE_LIMIT_CASES])
def test_full_queue_rejects_with_429_at_once(case: QueueLimitCase) -> None:
    h = Harness()
    waiters = [h.request(max_queue=case.max_queue) for _ in range(case.requests)]
    rejected = [w for w in waiters if w.error is not None]
    assert len(rejected) == case.expect_rejected
    for waiter in rejected:
        assert isinstance(waiter.error, QueueFull)
        assert waiter.error.status_code == 429 and waiter.error.error_code == "REQUEST_LIMIT_EXCEEDED"


def test_waiters_past_their_deadline_get_503_with_retry_after() -> None:
    h = Harness()
    early = h.request(timeout=1.0)
    h.now += 0.5
    late = h.request(timeout=1.0)
    h.now += 0.6  # early's timer (100 + 1.0) fires, late's (100.5 + 1.0) has not
    rejected = h.balancer.expire(early, 1.0)
    assert isinstance(early.error, NoCapacity)
    assert rejected == [Reject(early, early.error)]
    assert early.error.status_code == 503 and early.error.headers["Retry-After"]
    assert late.error is None
    assert h.balancer.concurrency(A) == (0, 1)


def test_expire_of_an_already_dispatched_waiter_does_nothing() -> None:
    h = Harness()
    waiter = h.request()
    h.balancer.add_replica(replica("r1"))
    assert h.balancer.expire(waiter, 1.0) == []
    assert waiter.error is None and waiter.slot is not None


def test_replica_failing_twice_in_a_row_is_ejected_until_readmitted() -> None:
    h = Harness()
    h.balancer.add_replica(replica("r1", capacity=4))
    slot = h.request().slot
    assert slot is not None
    assert h.balancer.release(slot, failed=True) == []  # one failure: still in rotation
    h.request()
    assert h.balancer.release(slot) == []  # a success resets the count
    h.request()
    h.balancer.release(slot, failed=True)
    h.request()
    assert h.balancer.release(slot, failed=True) == [Eject(slot)]
    waiter = h.request()
    assert waiter.slot is None  # ejected: the request waits
    actions = h.balancer.readmit(slot)
    assert dispatched(actions) == [(waiter, "r1")]
    assert h.balancer.readmit(slot) == []


def test_entity_failure_fans_out_to_every_waiter_and_later_requests() -> None:
    h = Harness()
    waiters = [h.request() for _ in range(4)]
    other = h.request(B)
    actions = h.balancer.fail_entity(A, "model file is corrupt")
    assert [action.waiter for action in actions if isinstance(action, Reject)] == waiters
    for waiter in waiters:
        assert isinstance(waiter.error, NoCapacity)
        assert "model file is corrupt" in waiter.error.message
    assert other.error is None  # another entity is unaffected
    h.actions.clear()
    h.now += 1
    late = h.request()
    assert isinstance(late.error, NoCapacity) and "model file is corrupt" in late.error.message
    assert h.take(Poke) == [Poke(A)]  # the autoscaler still hears of the demand
    h.balancer.add_replica(replica("r1"))  # a replica came up after all: the failure is over
    assert h.request().slot is not None


def test_draining_replica_gets_no_new_requests_and_reports_drained_when_idle() -> None:
    h = Harness()
    h.balancer.add_replica(replica("old", capacity=2))
    held = h.request().slot
    assert held is not None
    slot, actions = h.balancer.drain_replica("old")
    assert slot is held and actions == []  # one request still in flight
    waiter = h.request()
    assert waiter.slot is None  # queued: the draining replica takes nothing new
    assert h.balancer.release(held) == [Drained(held)]
    h.balancer.add_replica(replica("new", capacity=2, port=9001))
    assert waiter.slot is not None and waiter.slot.replica_id == "new"
    assert h.balancer.drain_replica("missing") == (None, [])


def test_removed_replica_reports_drained_and_pokes_when_waiters_are_left() -> None:
    h = Harness()
    h.balancer.add_replica(replica("r1", capacity=1))
    held = h.request().slot
    assert held is not None
    h.request()
    actions = h.balancer.remove_replica("r1")
    assert actions == [Drained(held), Poke(A)]
    # The in-flight request's release later is harmless and hands nothing to the dead replica.
    assert h.balancer.release(held) == [Drained(held)]
    assert h.balancer.concurrency(A) == (0, 1)


def test_retry_avoids_the_replica_that_failed_it_and_does_not_block_others() -> None:
    h = Harness()
    retry = h.request(exclude=frozenset({"r1"}))
    fresh = h.request()
    actions = h.balancer.add_replica(replica("r1", capacity=1))
    assert dispatched(actions) == [(fresh, "r1")]
    actions = h.balancer.add_replica(replica("r2", capacity=1, port=9001))
    assert dispatched(actions) == [(retry, "r2")]


def test_forgotten_entity_rejects_its_waiters() -> None:
    h = Harness()
    waiter = h.request()
    actions = h.balancer.forget_entity(A, "endpoint deleted")
    assert waiter.error is not None
    assert actions == [Reject(waiter, waiter.error)]
    assert A not in h.balancer.entities()


def test_invalid_replica_is_refused() -> None:
    h = Harness()
    with pytest.raises(ValueError, match="capacity"):
        h.balancer.add_replica(replica("r1", capacity=0))
    with pytest.raises(ValueError, match="http://host:port"):
        h.balancer.add_replica(ReplicaInfo("r2", A, "unix:///tmp/sock", 1))


def test_repr_reads_the_same_state() -> None:
    h = Harness()
    h.balancer.add_replica(replica("r1", capacity=1))
    h.request()
    h.request()
    h.balancer.fail_entity(B, "boom")
    text = repr(h.balancer)
    assert "ep/a: replicas=1 ready=1 in_flight=1 queued=1" in text
    assert "ep/b: replicas=0 ready=0 in_flight=0 queued=0 failed='boom'" in text
    assert repr(h.balancer.replicas(A)[0]) == "<ReplicaSlot r1 1/1>"


def test_arrivals_and_completions_are_counted_for_the_autoscaler() -> None:
    h = Harness()
    assert h.balancer.counts(A) == (0, 0)
    first = h.request()  # queued at zero: an arrival all the same (offered load)
    h.do(h.balancer.add_replica(replica("r1", capacity=1)))
    second = h.request()  # queued behind the first
    h.request(max_queue=1)  # refused (queue full): still an arrival
    assert h.balancer.counts(A) == (3, 0)
    assert first.slot is not None
    h.do(h.balancer.release(first.slot))
    assert second.slot is not None
    h.do(h.balancer.release(second.slot, failed=True))  # a failed request has left the replica too
    assert h.balancer.counts(A) == (3, 2)
    # The path without a task: a slot that carried nothing after all is not an arrival.
    slot = h.balancer.try_dispatch(A)
    assert slot is not None and h.balancer.counts(A) == (4, 2)
    h.do(h.balancer.give_back(slot))
    assert h.balancer.counts(A) == (3, 2)
    slot = h.balancer.try_dispatch(A)
    assert slot is not None
    h.do(h.balancer.release(slot))
    assert h.balancer.counts(A) == (4, 3)
    assert h.balancer.counts(B) == (0, 0)
