"""The per-replica concurrency limit: at most ``limit`` requests in progress, a bounded FIFO behind them.

Like Knative's queue-proxy breaker: requests beyond the container concurrency wait (in order) instead
of failing, and only a full queue is refused, with 429 so that the router can try another replica.
"""

from __future__ import annotations

import asyncio
from collections import deque

from runtime.errors import QueueFull


class Admission:
    def __init__(self, limit: int, max_queued: int) -> None:
        if limit < 1:
            raise ValueError(f"the concurrency limit must be at least 1, got {limit}")
        self.limit = limit
        self.max_queued = max_queued
        self.in_progress = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.in_progress < self.limit and not self._waiters:
            self.in_progress += 1
            return
        if len(self._waiters) >= self.max_queued:
            raise QueueFull(
                f"the replica is at its concurrency limit ({self.limit}) with {len(self._waiters)} "
                "requests queued",
                headers={"Retry-After": "1"},
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed to us just as we were cancelled: pass it on.
                self.release()
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        # The slot goes straight to the oldest waiter, so in_progress never dips and lets a newcomer
        # jump the queue.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_progress -= 1

    def __repr__(self) -> str:
        return f"<Admission {self.in_progress}/{self.limit} in progress, {self.queued} queued>"
