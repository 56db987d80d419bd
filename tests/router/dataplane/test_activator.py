"""The activator's async shell: waiting, waking, timeouts, cancellation, draining, health checks.

The autoscaler is a hand-written fake (``FakeScaler``) recording pokes and reports; replicas are
``ReplicaInfo`` values (no process is needed: the activator only hands out slots).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from autoscaler.testing import FakeClock
from autoscaler.types import EntityKey, ReplicaInfo
from router.dataplane.activator import Activator, ClientGone
from router.dataplane.balancer import ReplicaSlot
from runtime.errors import NoCapacity, QueueFull

A = EntityKey("ep", "a")


def replica(name: str = "r1", capacity: int = 1, port: int = 9000) -> ReplicaInfo:
    return ReplicaInfo(replica_id=name, entity=A, url=f"http://127.0.0.1:{port}", capacity=capacity)


class FakeScaler:
    def __init__(self) -> None:
        self.pokes: list[EntityKey] = []
        self.reports: list[tuple[EntityKey, int, int]] = []
        self.counts: list[tuple[int | None, int | None]] = []

    def poke(self, entity: EntityKey) -> None:
        self.pokes.append(entity)

    def report(self, entity: EntityKey, in_flight: int, queued: int, *, arrivals: int | None = None,
               completions: int | None = None) -> None:
        self.reports.append((entity, in_flight, queued))
        self.counts.append((arrivals, completions))


class AsyncScaler(FakeScaler):
    async def poke(self, entity: EntityKey) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        self.pokes.append(entity)


async def acquire(activator: Activator, queue_timeout_s: float = 5.0, max_queue: int = 100) -> ReplicaSlot:
    return await activator.acquire(A, queue_timeout_s=queue_timeout_s, max_queue=max_queue)


async def test_waiter_is_woken_when_a_replica_becomes_ready() -> None:
    scaler = FakeScaler()
    activator = Activator(scaler)
    task = asyncio.create_task(acquire(activator))
    await asyncio.sleep(0.01)
    assert not task.done()
    assert scaler.pokes == [A] and scaler.reports == [(A, 0, 1)]
    assert scaler.counts == [(1, 0)]  # the poke carries the counts the drain-aware estimate needs
    activator.replica_ready(replica())
    slot = await asyncio.wait_for(task, 1)
    assert activator.concurrency(A) == (1, 0)
    activator.release(slot)
    assert activator.concurrency(A) == (0, 0)


async def test_async_scaler_methods_are_run_in_the_background() -> None:
    scaler = AsyncScaler()
    activator = Activator(scaler)
    task = asyncio.create_task(acquire(activator))
    await asyncio.sleep(0.01)
    assert scaler.pokes == [A]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await activator.aclose()


async def test_queue_timeout_answers_503_with_retry_after() -> None:
    # On the injected clock: the waiter times out when that clock says so, however loaded the machine.
    clock = FakeClock()
    activator = Activator(FakeScaler(), clock=clock)
    task = asyncio.create_task(acquire(activator, queue_timeout_s=5.0))
    await clock.advance(4.9)
    assert not task.done()
    await clock.advance(0.2)
    with pytest.raises(NoCapacity) as caught:
        await task
    assert caught.value.headers["Retry-After"]
    assert activator.concurrency(A) == (0, 0)


async def test_queue_timeout_on_the_loops_own_timer() -> None:
    activator = Activator(FakeScaler())  # no clock given: the event loop's timer
    started = time.monotonic()
    with pytest.raises(NoCapacity):
        await acquire(activator, queue_timeout_s=0.2)
    assert time.monotonic() - started >= 0.19  # the loop may fire within its clock resolution


async def test_full_queue_answers_429_without_waiting() -> None:
    activator = Activator(FakeScaler())
    waiting = [asyncio.create_task(acquire(activator, max_queue=2)) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull):
        await acquire(activator, max_queue=2)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert activator.concurrency(A) == (0, 0)


async def test_cancelled_waiter_leaves_the_queue() -> None:
    activator = Activator(FakeScaler())
    first = asyncio.create_task(acquire(activator))
    second = asyncio.create_task(acquire(activator))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert activator.concurrency(A) == (0, 1)
    activator.replica_ready(replica())
    await asyncio.wait_for(second, 1)
    assert activator.concurrency(A) == (1, 0)


async def test_waiter_cancelled_right_after_being_woken_hands_its_slot_on() -> None:
    activator = Activator(FakeScaler())
    first = asyncio.create_task(acquire(activator))
    second = asyncio.create_task(acquire(activator))
    await asyncio.sleep(0.01)
    activator.replica_ready(replica(capacity=1))  # wakes ``first``; it has not run yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert activator.concurrency(A) == (1, 0)


async def test_client_disconnect_leaves_the_queue() -> None:
    activator = Activator(FakeScaler())
    gone = asyncio.Event()

    async def disconnected() -> None:
        await gone.wait()

    task = asyncio.create_task(
        activator.acquire(A, queue_timeout_s=5, max_queue=10, disconnected=disconnected)
    )
    await asyncio.sleep(0.01)
    assert activator.concurrency(A) == (0, 1)
    gone.set()
    with pytest.raises(ClientGone):
        await asyncio.wait_for(task, 1)
    assert activator.concurrency(A) == (0, 0)


async def test_entity_failure_answers_every_waiter_within_a_second() -> None:
    activator = Activator(FakeScaler())
    tasks = [asyncio.create_task(acquire(activator, queue_timeout_s=30)) for _ in range(50)]
    await asyncio.sleep(0.01)
    started = time.monotonic()
    activator.entity_failed(A, "replica exited with code 1: ModuleNotFoundError")
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 1)
    assert time.monotonic() - started < 1.0
    assert all(isinstance(r, NoCapacity) and "ModuleNotFoundError" in r.message for r in results)


async def test_draining_waits_for_in_flight_requests() -> None:
    activator = Activator(FakeScaler())
    info = replica(capacity=2)
    activator.replica_ready(info)
    slot = await acquire(activator)
    drain = asyncio.create_task(activator.replica_draining(info))
    await asyncio.sleep(0.02)
    assert not drain.done()
    late = asyncio.create_task(acquire(activator))  # must not go to the draining replica
    await asyncio.sleep(0.01)
    assert not late.done()
    activator.release(slot)
    await asyncio.wait_for(drain, 1)
    activator.replica_gone(info)
    activator.replica_ready(replica("r2", port=9001))
    assert (await asyncio.wait_for(late, 1)).replica_id == "r2"


async def test_draining_an_idle_replica_returns_at_once_and_gone_ends_a_drain() -> None:
    activator = Activator(FakeScaler())
    idle, busy = replica("idle", port=9000), replica("busy", port=9001)
    activator.replica_ready(idle)
    await asyncio.wait_for(activator.replica_draining(idle), 1)
    activator.replica_ready(busy)
    await acquire(activator)
    drain = asyncio.create_task(activator.replica_draining(busy))
    await asyncio.sleep(0.01)
    activator.replica_gone(busy)  # it died while draining: nothing is left to wait for
    await asyncio.wait_for(drain, 1)


async def test_ejected_replica_returns_after_passing_its_health_check() -> None:
    checks: list[str] = []
    healthy = asyncio.Event()

    async def health_check(info: ReplicaInfo) -> bool:
        checks.append(info.replica_id)
        return healthy.is_set()

    activator = Activator(FakeScaler(), health_check=health_check, health_interval_s=0.01)
    activator.replica_ready(replica(capacity=4))
    for _ in range(2):
        activator.release(await acquire(activator), failed=True)
    waiting = asyncio.create_task(acquire(activator))
    await asyncio.sleep(0.05)
    assert not waiting.done() and checks  # ejected and being probed
    healthy.set()
    await asyncio.wait_for(waiting, 2)
    await activator.aclose()


async def test_reporter_samples_concurrency_for_the_autoscaler() -> None:
    scaler = FakeScaler()
    activator = Activator(scaler, report_interval_s=0.01)
    await activator.start()
    activator.replica_ready(replica(capacity=3))
    slots = [await acquire(activator) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert (A, 2, 0) in scaler.reports
    for slot in slots:
        activator.release(slot)
    await asyncio.sleep(0.05)
    assert scaler.reports[-1] == (A, 0, 0)
    assert scaler.counts[-1] == (2, 2)
    await activator.aclose()


async def test_close_rejects_waiters_and_new_requests() -> None:
    activator = Activator(FakeScaler())
    await activator.start()
    task = asyncio.create_task(acquire(activator))
    await asyncio.sleep(0.01)
    await activator.aclose()
    with pytest.raises(NoCapacity, match="shutting down"):
        await asyncio.wait_for(task, 1)
    with pytest.raises(NoCapacity, match="shutting down"):
        await acquire(activator)
    assert "Activator" in repr(activator)
