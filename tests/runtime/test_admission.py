from __future__ import annotations

import asyncio

import pytest

from runtime.admission import Admission
from runtime.errors import QueueFull


async def test_admits_up_to_the_limit_then_queues_in_order() -> None:
    admission = Admission(limit=2, max_queued=4)
    await admission.acquire()
    await admission.acquire()
    order: list[int] = []

    async def waiter(index: int) -> None:
        await admission.acquire()
        order.append(index)

    tasks = [asyncio.ensure_future(waiter(index)) for index in range(3)]
    await asyncio.sleep(0)
    assert (admission.in_progress, admission.queued) == (2, 3)
    for _ in range(3):
        admission.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert admission.in_progress == 2  # slots were handed over, never freed in between


async def test_a_full_queue_is_refused_with_429() -> None:
    admission = Admission(limit=1, max_queued=1)
    await admission.acquire()
    queued = asyncio.ensure_future(admission.acquire())
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as refused:
        await admission.acquire()
    assert refused.value.status_code == 429
    assert refused.value.headers == {"Retry-After": "1"}
    admission.release()
    await queued


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    admission = Admission(limit=1, max_queued=4)
    await admission.acquire()
    waiter = asyncio.ensure_future(admission.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert admission.queued == 0
    admission.release()
    assert admission.in_progress == 0


async def test_a_waiter_cancelled_after_being_handed_a_slot_passes_it_on() -> None:
    admission = Admission(limit=1, max_queued=4)
    await admission.acquire()
    first = asyncio.ensure_future(admission.acquire())
    second = asyncio.ensure_future(admission.acquire())
    await asyncio.sleep(0)
    admission.release()  # hands the slot to ``first`` ...
    first.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1.0)  # the slot went on to the next waiter
    assert admission.in_progress == 1


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Admission(limit=0, max_queued=1)
