"""Concurrency samples from the routers, aggregated into the stable and panic window averages.

Each router reports ``in_flight + queued`` for a served entity whenever it changes (and at least every
few seconds while it is non-zero). A report is a *level*: it holds until the same router reports again,
so the signal is piecewise constant and a window average is its time-weighted mean — exact no matter
how often or how irregularly routers report. Several routers (Kubernetes) report under their own
``source`` names; their levels add up.

Storage is bounded: closed segments are integrated into 1-second buckets (area = concurrency x
seconds) that fall off after the longest window; a router that stops reporting has its last level
expire after ``sample_ttl_s`` so that a dead router cannot hold replicas up forever.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

BUCKET_S = 1.0


@dataclass(frozen=True, slots=True)
class NoData:
    """Nothing was ever reported for the entity: the policy makes no metric-driven change."""

    reason: str = "no concurrency reports yet"


class WindowReading(NamedTuple):
    """What the policy sees of an entity's traffic at one instant."""

    stable_concurrency: float  # time-weighted mean over the stable window
    panic_concurrency: float  # time-weighted mean over the panic window
    current_concurrency: float  # the sum of the routers' latest levels
    queued: int  # requests waiting in the routers' activator queues right now
    last_busy_at: float | None  # last instant concurrency was > 0 (a poke counts); None: never
    observed_since: float  # first report or poke
    poked: bool = False  # a request arrived while the entity had no replica


@dataclass(slots=True)
class _SourceLevel:
    concurrency: float
    queued: int
    since: float


class MetricsWindow:
    """Per-entity aggregation of router reports. Not thread-safe: the autoscaler's event loop owns it."""

    def __init__(self, retention_s: float, sample_ttl_s: float = 10.0) -> None:
        self._retention_s = retention_s
        self._sample_ttl_s = sample_ttl_s
        # (bucket index, area in concurrency-seconds), oldest first, and the sum of their areas: a
        # window average then touches only the few buckets at one end (10,000 entities per tick).
        self._buckets: deque[list[float]] = deque()
        self._total_area = 0.0
        self._levels: dict[str, _SourceLevel] = {}
        self._first_seen: float | None = None
        self._last_busy_at: float | None = None
        self._poked = False

    def set_retention(self, retention_s: float) -> None:
        """Keep at least ``retention_s`` of history (the entity's stable window may have changed)."""
        self._retention_s = retention_s

    def report(self, now: float, in_flight: int, queued: int, source: str = "router") -> None:
        if in_flight < 0 or queued < 0:
            raise ValueError(f"concurrency report must be >= 0, got in_flight={in_flight} queued={queued}")
        if self._first_seen is None:
            self._first_seen = now
        previous = self._levels.get(source)
        if previous is not None:
            held_until = min(now, previous.since + self._sample_ttl_s)
            self._integrate(previous, held_until)
            if previous.concurrency > 0:
                self._last_busy_at = max(self._last_busy_at or held_until, held_until)
        concurrency = float(in_flight + queued)
        if concurrency > 0:
            self._last_busy_at = now
        self._levels[source] = _SourceLevel(concurrency, queued, now)
        self._evict(now)

    def poke(self, now: float) -> None:
        """A request is waiting for an entity that has no replica: demand, before any report says so."""
        if self._first_seen is None:
            self._first_seen = now
        self._last_busy_at = now
        self._poked = True

    def clear_poke(self) -> None:
        """The loop acted on the poke (the cold-start fast path ran)."""
        self._poked = False

    def reading(self, now: float, stable_window_s: float, panic_window_s: float) -> WindowReading | NoData:
        first_seen = self._first_seen
        if first_seen is None:
            return NoData()
        self._evict(now)
        # Windows that began before the first report are averaged over the time observed so far: a
        # new entity's first 10 s at 5 concurrent read as 5, not as 5 x 10 / 60.
        stable_start = max(now - stable_window_s, first_seen)
        panic_start = max(now - panic_window_s, first_seen)
        stable_area = self._area_since(stable_start) if self._buckets else 0.0
        panic_area = self._area_since(panic_start) if self._buckets else 0.0
        current = 0.0
        queued = 0
        last_busy_at = self._last_busy_at
        ttl = self._sample_ttl_s
        # One pass over the routers' open segments: each level holds from its report until now, or
        # until it expired.
        for level in self._levels.values():
            concurrency = level.concurrency
            if concurrency == 0:
                continue
            since = level.since
            held_until = since + ttl
            if held_until >= now:
                held_until = now
                current += concurrency
                queued += level.queued
            if last_busy_at is None or held_until > last_busy_at:
                last_busy_at = held_until
            if held_until > stable_start:
                stable_area += concurrency * (held_until - max(since, stable_start))
            if held_until > panic_start:
                panic_area += concurrency * (held_until - max(since, panic_start))
        stable_duration = now - stable_start
        panic_duration = now - panic_start
        # A zero duration: the very first report is happening now, and its level is the best estimate.
        return WindowReading(
            stable_area / stable_duration if stable_duration > 0 else current,
            panic_area / panic_duration if panic_duration > 0 else current,
            current,
            queued,
            last_busy_at,
            first_seen,
            self._poked,
        )

    @property
    def retained_buckets(self) -> int:
        """How many 1-second buckets are held (bounded by the retention)."""
        return len(self._buckets)

    def _area_since(self, start: float) -> float:
        buckets = self._buckets
        if not buckets:
            return 0.0
        first_index = math.floor(start / BUCKET_S)
        # Only the part of the first bucket inside the window counts; areas are assumed spread
        # evenly over a bucket (1 s against windows of 6 s and more).
        inside = min(1.0, ((first_index + 1) * BUCKET_S - start) / BUCKET_S)
        if first_index - buckets[0][0] < buckets[-1][0] - first_index:
            # Most buckets are inside: the total less what lies before the window.
            area = self._total_area
            for index, bucket_area in buckets:
                if index > first_index:
                    break
                area -= bucket_area if index < first_index else bucket_area * (1.0 - inside)
            return max(0.0, area)
        area = 0.0
        for index, bucket_area in reversed(buckets):
            if index < first_index:
                break
            area += bucket_area * inside if index == first_index else bucket_area
        return area

    def _integrate(self, level: _SourceLevel, until: float) -> None:
        """Add ``level`` held from ``level.since`` to ``until`` into the buckets it spans."""
        if level.concurrency == 0 or until <= level.since:
            return
        position = level.since
        while position < until:
            index = math.floor(position / BUCKET_S)
            bucket_end = (index + 1) * BUCKET_S
            piece_end = min(until, bucket_end)
            self._add_area(index, level.concurrency * (piece_end - position))
            position = piece_end

    def _add_area(self, index: int, area: float) -> None:
        self._total_area += area
        if self._buckets and self._buckets[-1][0] == index:
            self._buckets[-1][1] += area
            return
        if not self._buckets or self._buckets[-1][0] < index:
            self._buckets.append([index, area])
            return
        # A segment from a slower router ends in a bucket already passed by a faster one.
        for bucket in reversed(self._buckets):
            if bucket[0] == index:
                bucket[1] += area
                return
            if bucket[0] < index:
                break
        self._buckets.append([index, area])
        self._buckets = deque(sorted(self._buckets, key=lambda bucket: bucket[0]))

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        if not buckets or buckets[0][0] >= (now - self._retention_s) / BUCKET_S - 1:
            return
        oldest_kept = math.floor((now - self._retention_s) / BUCKET_S) - 1
        while self._buckets and self._buckets[0][0] < oldest_kept:
            self._total_area -= self._buckets.popleft()[1]
        if not self._buckets:
            self._total_area = 0.0  # no float residue once nothing is held
