"""The adaptive batcher: concurrent requests share one model call.

Each request gets one future. The batcher takes whatever is queued when the model is free, so an idle
replica adds no delay; it waits (at most ``max_delay_s`` past the oldest request, on the monotonic
clock) only for requests that are already being received (``announce``d but not yet submitted).
A model failure reaches every request of its batch (futures already cancelled are skipped); when the
model rejects a merged input, the batch's requests are retried one by one so that only the offending
request fails. If the batcher itself dies, every pending future fails and later submits fail at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from runtime.batching import BatchKey, batch_key, merge, plan, split
from runtime.errors import InferenceError, InvalidInput, NoCapacity, ZeroserveError
from runtime.types import Prediction, Tensors

logger = logging.getLogger(__name__)

PredictFn = Callable[[Tensors], Awaitable[Prediction]]


@dataclass(slots=True)
class _Pending:
    inputs: Tensors
    rows: int
    key: BatchKey
    arrived: float
    future: asyncio.Future[Prediction]


class Batcher:
    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch_size: int,
        max_delay_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._clock = clock
        self._pending: deque[_Pending] = deque()
        self._running: list[_Pending] = []
        self._announced = 0
        self._wakeup: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._failure: ZeroserveError | None = None
        self._splittable = True
        self.batches = 0  # model calls made, for metrics and tests
        self.batched_requests = 0

    # -- the request side ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="zeroserve-batcher")
        self._task.add_done_callback(self._on_stopped)

    def announce(self) -> None:
        """A request has started arriving and will ``submit`` (or ``withdraw``) soon."""
        self._announced += 1

    def withdraw(self) -> None:
        """An announced request will not submit (it failed validation, or was cancelled)."""
        self._announced -= 1
        if self._announced == 0:
            self._wake()

    async def submit(self, inputs: Tensors, rows: int, *, announced: bool = False) -> Prediction:
        if announced:
            self._announced -= 1
        if self._failure is not None:
            raise self._failure
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(inputs, rows, batch_key(inputs), self._clock(), future))
        self._wake()
        return await future

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._failure = NoCapacity("the replica is shutting down")
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- the batching loop ---------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _wait(self, seconds: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._wakeup = loop.create_future()
        timer = loop.call_later(seconds, self._wake) if seconds is not None else None
        try:
            await self._wakeup
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()

    async def _run(self) -> None:
        while True:
            if not self._pending:
                await self._wait(None)
                continue
            await self._gather()
            batch = self._take()
            if batch:
                await self._execute(batch)

    async def _gather(self) -> None:
        """Wait for announced requests while the batch has room, until the oldest one's deadline."""
        deadline = self._pending[0].arrived + self.max_delay_s
        while self._announced > 0 and sum(item.rows for item in self._pending) < self.max_batch_size:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            await self._wait(remaining)

    def _take(self) -> list[_Pending]:
        pending = [item for item in self._pending if not item.future.done()]
        if not pending:
            self._pending.clear()
            return []
        max_rows = self.max_batch_size if self._splittable else 0
        first = plan([item.rows for item in pending], [item.key for item in pending], max_rows)[0]
        chosen = set(first)
        self._pending = deque(item for index, item in enumerate(pending) if index not in chosen)
        return [pending[index] for index in first]

    async def _execute(self, batch: list[_Pending]) -> None:
        # While the batch runs it is ``_running``: if the batcher dies mid-call (cancelled, or a bug),
        # ``_on_stopped`` fails these futures too. Only a call that returns clears it.
        self._running = batch
        await self._call(batch)
        self._running = []

    async def _call(self, batch: list[_Pending]) -> None:
        try:
            prediction = await self._predict(merge([item.inputs for item in batch]))
        except InvalidInput as exc:
            if len(batch) > 1:
                await self._one_by_one(batch)
            else:
                _fail(batch, exc)
            return
        except Exception as exc:
            _fail(batch, _as_error(exc))
            return
        try:
            parts = split(prediction, [item.rows for item in batch])
        except ValueError as exc:
            # The model's outputs do not follow its inputs' rows: never merge again.
            logger.warning("disabling batching: %s", exc)
            self._splittable = False
            await self._one_by_one(batch)
            return
        self.batches += 1
        self.batched_requests += len(batch)
        for item, part in zip(batch, parts, strict=True):
            if not item.future.done():
                item.future.set_result(part)

    async def _one_by_one(self, batch: list[_Pending]) -> None:
        for item in batch:
            if item.future.done():
                continue
            try:
                result = await self._predict(item.inputs)
            except Exception as exc:
                if not item.future.done():
                    item.future.set_exception(_as_error(exc))
            else:
                self.batches += 1
                self.batched_requests += 1
                if not item.future.done():
                    item.future.set_result(result)

    def _on_stopped(self, task: asyncio.Task[None]) -> None:
        if self._failure is None:
            reason = "cancelled" if task.cancelled() else repr(task.exception())
            logger.error("the batcher stopped unexpectedly: %s", reason)
            self._failure = InferenceError(f"the batcher stopped: {reason}")
        _fail([*self._running, *self._pending], self._failure)
        self._pending.clear()
        self._running = []

    def __repr__(self) -> str:
        return (
            f"<Batcher pending={len(self._pending)} running={len(self._running)} "
            f"announced={self._announced} batches={self.batches}>"
        )


def _fail(items: list[_Pending], error: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


def _as_error(exc: Exception) -> ZeroserveError:
    return exc if isinstance(exc, ZeroserveError) else InferenceError(f"inference failed: {exc}")
