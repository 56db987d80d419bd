"""Concurrency samples from the routers, aggregated into the stable and panic window averages.

Each router reports ``in_flight + queued`` for a served entity whenever it changes (and at least every
few seconds while it is non-zero). A report is a *level*: it holds until the same router reports again,
so the signal is piecewise constant and a window average is its time-weighted mean — exact no matter
how often or how irregularly routers report. Several routers (Kubernetes) report under their own
``source`` names; their levels add up.

Storage is bounded: closed segments are integrated into 1-second buckets (area = concurrency x
seconds) that fall off after the longest window; a router that stops reporting has its last level
expire after ``sample_ttl_s`` so that a dead router cannot hold replicas up forever.

A router may also send its cumulative counts of requests that arrived and completed. From them the
window derives what the drain-aware estimate needs (``autoscaler.policy``): the arrival rate over each
window, and the mean service time by Little's law (the area under the in-flight level, queued requests
excluded, divided by the completions in the same window). Counts are spread evenly over the interval
since the router's previous report, so a rate is exact to the routers' report interval (1 s).
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
    # Requests arriving per second over each window; None when no router reports its counts.
    stable_arrival_rate: float | None = None
    panic_arrival_rate: float | None = None
    # Mean seconds a request spends on a replica (Little's law over the stable window, or the last
    # window that had enough completions); None until enough requests have completed.
    service_time_s: float | None = None


@dataclass(slots=True)
class _SourceLevel:
    concurrency: float
    queued: int
    since: float
    # The router's cumulative counts at this report; None when it sends none.
    arrivals: int | None = None
    completions: int | None = None


# A bucket: [index, concurrency area, in-flight area, arrivals, completions]. Lists, not objects: the
# loop reads thousands per tick.
_INDEX, _AREA, _SERVED, _ARRIVALS, _COMPLETIONS = range(5)
# Fewer completions than this in the stable window say too little of the service time (the first one
# after a cold start carries the whole in-flight area of the requests still running): the last good
# estimate stands instead.
MIN_COMPLETIONS_FOR_SERVICE_TIME = 8
# A burst's rate is averaged over at least this long: the first tenth of a second of 150 req/s holds
# some 15 requests, too few to size a fleet on.
SHORTEST_BURST_S = 0.5


def _since(count: int, before: int) -> int:
    """What a cumulative count grew by; lower than before: the router restarted and counts from zero."""
    return count - before if count >= before else count


class MetricsWindow:
    """Per-entity aggregation of router reports. Not thread-safe: the autoscaler's event loop owns it."""

    def __init__(self, retention_s: float, sample_ttl_s: float = 10.0) -> None:
        self._retention_s = retention_s
        self._sample_ttl_s = sample_ttl_s
        # (bucket index, area in concurrency-seconds), oldest first, and the sum of their areas: a
        # window average then touches only the few buckets at one end (10,000 entities per tick).
        self._buckets: deque[list[float]] = deque()
        self._totals = [0.0, 0.0, 0.0, 0.0, 0.0]  # sums of every bucket's fields (index unused)
        self._counted = False  # some router sent its arrival and completion counts
        self._service_time_s: float | None = None
        self._levels: dict[str, _SourceLevel] = {}
        self._first_seen: float | None = None
        self._last_busy_at: float | None = None
        # When the current busy spell began, and how long the entity had been idle before it.
        self._busy_since: float | None = None
        self._idle_before_s = 0.0
        self._poked = False

    def set_retention(self, retention_s: float) -> None:
        """Keep at least ``retention_s`` of history (the entity's stable window may have changed)."""
        self._retention_s = retention_s

    def report(
        self,
        now: float,
        in_flight: int,
        queued: int,
        source: str = "router",
        *,
        arrivals: int | None = None,
        completions: int | None = None,
    ) -> None:
        """``source``'s level now; ``arrivals`` and ``completions``: its cumulative counts, if it has them."""
        if in_flight < 0 or queued < 0:
            raise ValueError(f"concurrency report must be >= 0, got in_flight={in_flight} queued={queued}")
        if (arrivals is None) != (completions is None) or min(arrivals or 0, completions or 0) < 0:
            raise ValueError(f"counts must come together and be >= 0, got arrivals={arrivals} "
                             f"completions={completions}")
        if self._first_seen is None:
            self._first_seen = now
        previous = self._levels.get(source)
        if previous is not None:
            held_until = min(now, previous.since + self._sample_ttl_s)
            self._integrate(previous, held_until)
            if previous.concurrency > 0:
                self._last_busy_at = max(self._last_busy_at or held_until, held_until)
        if arrivals is not None and completions is not None:
            self._counted = True
            if previous is not None and previous.arrivals is not None and previous.completions is not None:
                new_arrivals = _since(arrivals, previous.arrivals)
                new_completions = _since(completions, previous.completions)
                if new_arrivals or new_completions:
                    # They happened since its last report: spread over that time, as its level is.
                    self._spread(previous.since, now, 0.0, 0.0, new_arrivals, new_completions)
            # A source's first counts cover a past of unknown length: they only set its baseline.
        concurrency = float(in_flight + queued)
        if concurrency > 0:
            self._mark_busy(now, previous.since if previous is not None else now)
        self._levels[source] = _SourceLevel(concurrency, queued, now, arrivals, completions)
        self._evict(now)

    def poke(self, now: float) -> None:
        """A request is waiting for an entity that has no replica: demand, before any report says so."""
        if self._first_seen is None:
            self._first_seen = now
        self._mark_busy(now, now)
        self._poked = True

    def _mark_busy(self, now: float, since: float) -> None:
        """Busy at ``now``, and maybe since ``since`` (the previous report of the source)."""
        last_busy_at = self._last_busy_at
        idle_s = now - (last_busy_at if last_busy_at is not None else (self._first_seen or now))
        if last_busy_at is None or (idle_s > 0 and not self._busy_levels(now)):
            self._busy_since = max(since, last_busy_at if last_busy_at is not None else since)
            self._idle_before_s = idle_s if last_busy_at is not None else float("inf")
        self._last_busy_at = now

    def _busy_levels(self, now: float) -> bool:
        ttl = self._sample_ttl_s
        return any(level.concurrency > 0 and level.since + ttl > now for level in self._levels.values())

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
        if self._buckets:
            stable_area, stable_served, stable_arrivals, stable_completions = self._sums_since(stable_start)
            panic_area, _, panic_arrivals, _ = self._sums_since(panic_start)
        else:
            stable_area = stable_served = stable_arrivals = stable_completions = 0.0
            panic_area = panic_arrivals = 0.0
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
                held = held_until - max(since, stable_start)
                stable_area += concurrency * held
                stable_served += (concurrency - level.queued) * held
            if held_until > panic_start:
                panic_area += concurrency * (held_until - max(since, panic_start))
        stable_duration = now - stable_start
        panic_duration = now - panic_start
        stable_rate = panic_rate = None
        if self._counted:
            if stable_completions >= MIN_COMPLETIONS_FOR_SERVICE_TIME:
                # Little's law: mean time in service = mean in flight / completion rate; the window's
                # duration cancels out.
                self._service_time_s = stable_served / stable_completions
            if stable_duration > 0:
                stable_rate = stable_arrivals / stable_duration
                panic_rate = panic_arrivals / panic_duration
                busy_since = self._busy_since
                if (busy_since is not None and busy_since > panic_start
                        and self._idle_before_s >= panic_window_s and self._buckets):
                    # A burst after a panic window or more of silence is averaged from its own start:
                    # the calm before it says nothing of its rate, and averaging it in would halve the
                    # estimate just when replicas must start. The burst's start is the report
                    # before the one that turned busy: counts are spread over the interval between.
                    panic_rate = self._sums_since(busy_since)[2] / max(now - busy_since, SHORTEST_BURST_S)
        # A zero duration: the very first report is happening now, and its level is the best estimate.
        return WindowReading(
            stable_area / stable_duration if stable_duration > 0 else current,
            panic_area / panic_duration if panic_duration > 0 else current,
            current,
            queued,
            last_busy_at,
            first_seen,
            self._poked,
            stable_rate,
            panic_rate,
            self._service_time_s if self._counted else None,
        )

    @property
    def retained_buckets(self) -> int:
        """How many 1-second buckets are held (bounded by the retention)."""
        return len(self._buckets)

    def _sums_since(self, start: float) -> tuple[float, float, float, float]:
        """(area, in-flight area, arrivals, completions) of the buckets from ``start`` on."""
        buckets = self._buckets
        first_index = math.floor(start / BUCKET_S)
        # Only the part of the first bucket inside the window counts; areas and counts are assumed
        # spread evenly over a bucket (1 s against windows of 6 s and more).
        inside = min(1.0, ((first_index + 1) * BUCKET_S - start) / BUCKET_S)
        # Four running sums written out rather than looped over: the loop reads two windows of every
        # entity every tick (10,000 entities in well under 100 ms).
        if first_index - buckets[0][_INDEX] < buckets[-1][_INDEX] - first_index:
            # Most buckets are inside: the totals less what lies before the window.
            _, area, served, arrivals, completions = self._totals
            for index, bucket_area, bucket_served, bucket_arrivals, bucket_completions in buckets:
                if index > first_index:
                    break
                share = 1.0 if index < first_index else 1.0 - inside
                area -= bucket_area * share
                served -= bucket_served * share
                arrivals -= bucket_arrivals * share
                completions -= bucket_completions * share
            return max(0.0, area), max(0.0, served), max(0.0, arrivals), max(0.0, completions)
        area = served = arrivals = completions = 0.0
        for index, bucket_area, bucket_served, bucket_arrivals, bucket_completions in reversed(buckets):
            if index < first_index:
                break
            share = inside if index == first_index else 1.0
            area += bucket_area * share
            served += bucket_served * share
            arrivals += bucket_arrivals * share
            completions += bucket_completions * share
        return area, served, arrivals, completions

    def _integrate(self, level: _SourceLevel, until: float) -> None:
        """Add ``level`` held from ``level.since`` to ``until`` into the buckets it spans."""
        if level.concurrency == 0 or until <= level.since:
            return
        self._spread(level.since, until, level.concurrency, level.concurrency - level.queued, 0.0, 0.0)

    def _spread(self, start: float, end: float, concurrency: float, in_flight: float, arrivals: float,
                completions: float) -> None:
        """Levels held from ``start`` to ``end``, and counts that happened evenly in between, into
        the buckets they span (all in ``end``'s bucket when the interval is empty)."""
        duration = end - start
        if duration <= 0:
            self._add(math.floor(end / BUCKET_S), 0.0, 0.0, arrivals, completions)
            return
        # What lies before the retention falls out of every window: not stored (a router silent for
        # an hour would otherwise fill 3,600 buckets only to evict them).
        position = max(start, end - self._retention_s - BUCKET_S)
        while position < end:
            index = math.floor(position / BUCKET_S)
            piece_end = min(end, (index + 1) * BUCKET_S)
            held = piece_end - position
            share = held / duration
            self._add(index, concurrency * held, in_flight * held, arrivals * share, completions * share)
            position = piece_end

    def _add(self, index: int, area: float, served: float, arrivals: float, completions: float) -> None:
        totals = self._totals
        totals[_AREA] += area
        totals[_SERVED] += served
        totals[_ARRIVALS] += arrivals
        totals[_COMPLETIONS] += completions
        buckets = self._buckets
        if buckets and buckets[-1][_INDEX] >= index:
            # The newest bucket, or (a segment from a slower router) one already passed by a faster one.
            for bucket in reversed(buckets):
                if bucket[_INDEX] == index:
                    bucket[_AREA] += area
                    bucket[_SERVED] += served
                    bucket[_ARRIVALS] += arrivals
                    bucket[_COMPLETIONS] += completions
                    return
                if bucket[_INDEX] < index:
                    break
            buckets.append([index, area, served, arrivals, completions])
            self._buckets = deque(sorted(buckets, key=lambda bucket: bucket[_INDEX]))
            return
        buckets.append([index, area, served, arrivals, completions])

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        if not buckets or buckets[0][_INDEX] >= (now - self._retention_s) / BUCKET_S - 1:
            return
        oldest_kept = math.floor((now - self._retention_s) / BUCKET_S) - 1
        totals = self._totals
        while buckets and buckets[0][_INDEX] < oldest_kept:
            gone = buckets.popleft()
            for position in range(1, 5):
                totals[position] -= gone[position]
        if not buckets:
            self._totals = [0.0, 0.0, 0.0, 0.0, 0.0]  # no float residue once nothing is held
