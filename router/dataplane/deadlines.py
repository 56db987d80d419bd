"""Deadlines of many things in flight, enforced by one event-loop timer.

A loop timer per request (``asyncio.timeout``, ``call_later``) is a measurable share of the router's CPU
per query. ``Deadlines`` keeps each item's deadline in a dict (an insert and a delete per request) and
one timer set for the earliest; when it fires, the overdue items are handed to ``on_expiry`` and the
timer is set for the earliest one left. With steady traffic it fires about once per timeout period.
The upstream pool (exchanges with a replica) and the gateway's query path (the front door's request
timeout) both use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class Deadlines(Generic[T]):
    def __init__(self, on_expiry: Callable[[T], None]) -> None:
        self._on_expiry = on_expiry
        self._due: dict[T, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def __len__(self) -> int:
        return len(self._due)

    def watch(self, item: T, when: float) -> None:
        """``item`` must be done by ``when`` (loop time), or ``on_expiry(item)`` is called."""
        self._due[item] = when
        if when < self._timer_at:
            self._arm(when)

    def forget(self, item: T) -> None:
        self._due.pop(item, None)

    def close(self) -> None:
        """Stop the timer (nothing is watched any more)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = float("inf")

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = asyncio.get_running_loop().call_at(when, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        # A loop timer may fire a little before its time (libuv counts milliseconds).
        now = asyncio.get_running_loop().time() + 0.001
        earliest = float("inf")
        for item, when in list(self._due.items()):
            if when <= now:
                del self._due[item]
                self._on_expiry(item)
            elif when < earliest:
                earliest = when
        if earliest != float("inf"):
            self._arm(earliest)
