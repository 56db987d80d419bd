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

BUCKET_S = 1.0


@dataclass(frozen=True, slots=True)
class NoData:
    """Nothing was ever reported for the entity: the policy makes no metric-driven change."""

    reason: str = "no concurrency reports yet"


@dataclass(frozen=True, slots=True)
class WindowReading:
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
        # (bucket index, area in concurrency-seconds), oldest first.
        self._buckets: deque[list[float]] = deque()
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
        if self._first_seen is None:
            return NoData()
        current = 0.0
        queued = 0
        last_busy_at = self._last_busy_at
        for level in self._levels.values():
            if now - level.since <= self._sample_ttl_s:
                current += level.concurrency
                queued += level.queued
                if level.concurrency > 0:
                    last_busy_at = now
            elif level.concurrency > 0:
                # An expired level was busy until it expired.
                expired_at = level.since + self._sample_ttl_s
                last_busy_at = max(last_busy_at or expired_at, expired_at)
        return WindowReading(
            stable_concurrency=self._average(now, stable_window_s),
            panic_concurrency=self._average(now, panic_window_s),
            current_concurrency=current,
            queued=queued,
            last_busy_at=last_busy_at,
            observed_since=self._first_seen,
            poked=self._poked,
        )

    @property
    def retained_buckets(self) -> int:
        """How many 1-second buckets are held (bounded by the retention)."""
        return len(self._buckets)

    def _average(self, now: float, window_s: float) -> float:
        assert self._first_seen is not None
        start = max(now - window_s, self._first_seen)
        duration = now - start
        if duration <= 0:
            # The very first report is happening now: its level is the best estimate there is.
            return sum(level.concurrency for level in self._levels.values())
        area = 0.0
        first_index = math.floor(start / BUCKET_S)
        for index, bucket_area in reversed(self._buckets):
            if index < first_index:
                break
            if index == first_index:
                # Only the part of the oldest bucket inside the window counts; areas are assumed
                # spread evenly over a bucket (1 s against windows of 6 s and more).
                bucket_end = (index + 1) * BUCKET_S
                area += bucket_area * min(1.0, (bucket_end - start) / BUCKET_S)
            else:
                area += bucket_area
        for level in self._levels.values():
            # Open segments: each router's latest level from its report (or the window start) to now.
            segment_start = max(level.since, start)
            segment_end = min(now, level.since + self._sample_ttl_s)
            if segment_end > segment_start:
                area += level.concurrency * (segment_end - segment_start)
        return area / duration

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
        oldest_kept = math.floor((now - self._retention_s) / BUCKET_S) - 1
        while self._buckets and self._buckets[0][0] < oldest_kept:
            self._buckets.popleft()
