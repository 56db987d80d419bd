"""Request counts and latencies of the data plane, recorded cheaply for the metrics exporter.

Recording is a dict increment and a ``bisect`` into fixed latency buckets (no locks: the data plane runs
on one event loop). The observability work reads these and exports them (Prometheus text); the
cumulative bucket layout matches a Prometheus histogram so the export is a straight copy.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from autoscaler.types import EntityKey

# Upper bounds in seconds; the last bucket (+Inf) is implicit.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


@dataclass(slots=True)
class RequestStats:
    """Counts and latencies of one served entity's requests."""

    by_status: dict[int, int] = field(default_factory=dict)
    # latency_counts[i] counts requests with latency <= LATENCY_BUCKETS_S[i] and > the previous bound;
    # the last slot counts those above every bound. Not cumulative; ``cumulative_buckets`` makes it so.
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum_s: float = 0.0
    count: int = 0
    retries: int = 0
    # Same layout, for the two parts of a request a replica answered: waiting for a replica slot (the
    # attempt that got the answer) and the replica's answer itself.
    queue_wait_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    queue_wait_sum_s: float = 0.0
    upstream_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    upstream_sum_s: float = 0.0

    def record(self, status: int, seconds: float) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.latency_sum_s += seconds
        self.count += 1

    def record_queue_wait(self, seconds: float) -> None:
        self.queue_wait_counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.queue_wait_sum_s += seconds

    def record_upstream(self, seconds: float) -> None:
        self.upstream_counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.upstream_sum_s += seconds

    def cumulative_buckets(self) -> list[tuple[float, int]]:
        """(upper bound, requests at or below it) pairs, ending with (inf, count)."""
        total = 0
        result = []
        for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), self.latency_counts, strict=True):
            total += count
            result.append((bound, total))
        return result

    def errors(self) -> int:
        return sum(count for status, count in self.by_status.items() if status >= 400)


class DataPlaneStats:
    """Per served entity request stats, plus requests that never reached an entity."""

    def __init__(self) -> None:
        self._entities: dict[EntityKey, RequestStats] = {}
        # Unknown endpoint, bad input before routing, ...: counted by status only, because an unknown
        # endpoint name must not create a metric series (its cardinality is the client's to choose).
        self.unrouted_by_status: dict[int, int] = {}

    def entity(self, entity: EntityKey) -> RequestStats:
        stats = self._entities.get(entity)
        if stats is None:
            stats = self._entities[entity] = RequestStats()
        return stats

    def record(self, entity: EntityKey | None, status: int, seconds: float) -> None:
        if entity is None:
            self.unrouted_by_status[status] = self.unrouted_by_status.get(status, 0) + 1
        else:
            self.entity(entity).record(status, seconds)

    def items(self) -> list[tuple[EntityKey, RequestStats]]:
        return list(self._entities.items())

    def forget(self, entity: EntityKey) -> None:
        self._entities.pop(entity, None)
