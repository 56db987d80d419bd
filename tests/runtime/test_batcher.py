"""The adaptive batcher, driven through its public API with a hand-written model (no mocks)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from runtime.batcher import Batcher
from runtime.errors import InferenceError, InvalidInput, NoCapacity
from runtime.types import Layout, Prediction, Tensors


class FakeModel:
    """Doubles its input; ``gate`` holds calls until released; rejects rows equal to ``poison``."""

    def __init__(self, *, poison: float | None = None, broken: bool = False) -> None:
        self.calls: list[int] = []  # rows per call
        self.gate = asyncio.Event()
        self.gate.set()
        self.poison = poison
        self.broken = broken

    async def predict(self, inputs: Tensors) -> Prediction:
        self.calls.append(inputs["x"].shape[0])
        await self.gate.wait()
        if self.broken:
            raise RuntimeError("the model crashed")
        if self.poison is not None and (inputs["x"] == self.poison).any():
            raise InvalidInput("the model rejected the input: poison")
        return Prediction({"y": inputs["x"] * 2}, Layout.SINGLE)


def rows(*values: float) -> Tensors:
    return {"x": np.array(values, dtype=np.float64)}


async def started(model: FakeModel, **options: float) -> Batcher:
    batcher = Batcher(
        model.predict,
        max_batch_size=int(options.get("max_batch_size", 8)),
        max_delay_s=options.get("max_delay_s", 0.0),
    )
    batcher.start()
    return batcher


async def test_concurrent_requests_share_one_call_and_get_their_own_rows() -> None:
    model = FakeModel()
    batcher = await started(model)
    results = await asyncio.gather(*(batcher.submit(rows(value), 1) for value in (1.0, 2.0, 3.0)))
    assert [result.outputs["y"].tolist() for result in results] == [[2.0], [4.0], [6.0]]
    assert model.calls == [3]
    await batcher.close()


async def test_requests_arriving_while_the_model_runs_form_the_next_batch() -> None:
    model = FakeModel()
    model.gate.clear()
    batcher = await started(model, max_batch_size=4)
    first = asyncio.ensure_future(batcher.submit(rows(1.0), 1))
    await asyncio.sleep(0.01)  # the first call is now running, held by the gate
    later = [asyncio.ensure_future(batcher.submit(rows(float(value)), 1)) for value in range(2, 8)]
    await asyncio.sleep(0.01)
    model.gate.set()
    await asyncio.gather(first, *later)
    assert model.calls == [1, 4, 2]  # max_batch_size rows per call
    await batcher.close()


async def test_large_request_runs_alone() -> None:
    model = FakeModel()
    batcher = await started(model, max_batch_size=2)
    big, _small = await asyncio.gather(batcher.submit(rows(*range(5)), 5), batcher.submit(rows(9.0), 1))
    assert big.outputs["y"].shape == (5,)
    assert model.calls == [5, 1]
    await batcher.close()


async def test_model_failure_reaches_every_request_of_the_batch() -> None:
    model = FakeModel(broken=True)
    batcher = await started(model)
    results = await asyncio.gather(*(batcher.submit(rows(1.0), 1) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(result, InferenceError) for result in results)
    assert "the model crashed" in str(results[0])
    await batcher.close()


async def test_a_rejected_request_does_not_poison_its_batch_mates() -> None:
    model = FakeModel(poison=666.0)
    batcher = await started(model)
    results = await asyncio.gather(
        batcher.submit(rows(1.0), 1), batcher.submit(rows(666.0), 1), batcher.submit(rows(3.0), 1),
        return_exceptions=True,
    )  # fmt: skip
    assert isinstance(results[1], InvalidInput)
    first, third = results[0], results[2]
    assert isinstance(first, Prediction) and isinstance(third, Prediction)
    assert [first.outputs["y"].tolist(), third.outputs["y"].tolist()] == [[2.0], [6.0]]
    assert model.calls == [3, 1, 1, 1]  # the merged call, then one by one
    await batcher.close()


async def test_cancelled_requests_are_skipped() -> None:
    model = FakeModel()
    model.gate.clear()
    batcher = await started(model)
    blocker = asyncio.ensure_future(batcher.submit(rows(0.0), 1))
    await asyncio.sleep(0.01)
    abandoned = asyncio.ensure_future(batcher.submit(rows(1.0), 1))
    kept = asyncio.ensure_future(batcher.submit(rows(2.0), 1))
    await asyncio.sleep(0)
    abandoned.cancel()
    model.gate.set()
    await asyncio.gather(blocker, kept)
    assert model.calls == [1, 1]  # the cancelled request never reached the model
    assert kept.result().outputs["y"].tolist() == [4.0]
    await batcher.close()


async def test_waits_for_announced_requests_until_the_deadline() -> None:
    model = FakeModel()
    batcher = await started(model, max_delay_s=5.0)
    batcher.announce()  # a request is still being received
    first = asyncio.ensure_future(batcher.submit(rows(1.0), 1))
    await asyncio.sleep(0.02)
    assert model.calls == []  # held for the announced request
    await batcher.submit(rows(2.0), 1, announced=True)
    await first
    assert model.calls == [2]
    await batcher.close()


async def test_a_withdrawn_announcement_releases_the_batch() -> None:
    model = FakeModel()
    batcher = await started(model, max_delay_s=5.0)
    batcher.announce()
    first = asyncio.ensure_future(batcher.submit(rows(1.0), 1))
    await asyncio.sleep(0.01)
    batcher.withdraw()  # that request failed validation
    await asyncio.wait_for(first, 1.0)
    assert model.calls == [1]
    await batcher.close()


async def test_the_deadline_bounds_the_wait() -> None:
    model = FakeModel()
    batcher = await started(model, max_delay_s=0.05)
    batcher.announce()  # announced but never submitted
    loop = asyncio.get_running_loop()
    begin = loop.time()
    await asyncio.wait_for(batcher.submit(rows(1.0), 1), 2.0)
    assert 0.04 <= loop.time() - begin < 1.0
    await batcher.close()


async def test_batcher_death_fails_pending_and_later_requests() -> None:
    model = FakeModel()
    model.gate.clear()
    batcher = await started(model)
    running = asyncio.ensure_future(batcher.submit(rows(1.0), 1))
    await asyncio.sleep(0.01)
    queued = asyncio.ensure_future(batcher.submit(rows(2.0), 1))
    await asyncio.sleep(0)
    assert batcher._task is not None
    batcher._task.cancel()  # the task dying for any reason: here, an outside cancellation
    results = await asyncio.gather(running, queued, return_exceptions=True)
    assert all(isinstance(result, InferenceError) for result in results)
    with pytest.raises(InferenceError, match="batcher stopped"):
        await batcher.submit(rows(3.0), 1)


async def test_close_fails_pending_with_no_capacity() -> None:
    model = FakeModel()
    model.gate.clear()
    batcher = await started(model)
    pending = asyncio.ensure_future(batcher.submit(rows(1.0), 1))
    await asyncio.sleep(0.01)
    await batcher.close()
    with pytest.raises(NoCapacity):
        await pending
    with pytest.raises(NoCapacity):
        await batcher.submit(rows(2.0), 1)
