"""Per-endpoint time series kept in process, so the dashboard works without a Prometheus server.

Every ``resolution_s`` (5 s) the sampler turns the counters of ``MetricsHub`` into one point per
endpoint — rates and quantiles over the interval just ended, levels (replicas, queue) as of now — and
appends it to that endpoint's ring. A ring holds ``retention_s / resolution_s`` points (3600 / 5 = 720
for the default hour), about 80 KiB per endpoint, and overwrites its oldest point when full.

Latency quantiles come from the per-bucket deltas of the same histograms Prometheus sees, interpolated
inside the bucket as ``histogram_quantile`` does, so the dashboard and a Grafana panel agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from autoscaler.types import EntityKey
from router.dataplane.stats import LATENCY_BUCKETS_S
from router.observability.cost import CostLedger
from router.observability.metrics import STATUS_CLASSES, MetricsHub, by_class, quantile_from_counts

# The columns of a point, in the order the JSON API returns them.
FIELDS: tuple[str, ...] = (
    "requests_per_s",
    "p50_ms",
    "p99_ms",
    "error_rate",  # 5xx / all, over the interval
    "client_error_rate",  # 4xx / all (rate limits and full queues included)
    "replicas_desired",
    "replicas_ready",
    "replicas_starting",
    "queue_depth",
    "in_flight",
    "cold_starts",  # started during the interval
    "cost",  # accumulated since the ledger began, in the ledger's currency
    "cost_per_hour",  # burn rate at the replica count of the moment
)


class Ring:
    """A fixed-capacity column store: timestamps plus one column per field, oldest overwritten."""

    def __init__(self, capacity: int, fields: Sequence[str] = FIELDS) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.fields = tuple(fields)
        self._timestamps: list[float] = [0.0] * capacity
        self._columns: dict[str, list[float | None]] = {name: [None] * capacity for name in self.fields}
        self._next = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, timestamp: float, values: Mapping[str, float | None]) -> None:
        slot = self._next
        self._timestamps[slot] = timestamp
        for name, column in self._columns.items():
            column[slot] = values.get(name)
        self._next = (slot + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def _order(self) -> list[int]:
        start = (self._next - self._size) % self.capacity
        return [(start + offset) % self.capacity for offset in range(self._size)]

    def series(self, since: float | None = None) -> dict[str, list[float | None]]:
        """``{"t": [wall-clock seconds...], field: [values...]}``, oldest first, from ``since`` on."""
        slots = [slot for slot in self._order() if since is None or self._timestamps[slot] > since]
        result: dict[str, list[float | None]] = {"t": [self._timestamps[slot] for slot in slots]}
        for name, column in self._columns.items():
            result[name] = [column[slot] for slot in slots]
        return result

    def last(self) -> dict[str, float | None] | None:
        if not self._size:
            return None
        slot = (self._next - 1) % self.capacity
        return {"t": self._timestamps[slot], **{name: column[slot] for name, column in self._columns.items()}}


@dataclass(slots=True)
class _EntityMark:
    """Counters of one entity at the previous sample: the next point is the difference."""

    by_class: dict[str, int]
    duration_counts: list[int]
    cold_starts: int


@dataclass
class TimeSeriesStore:
    resolution_s: float = 5.0
    retention_s: float = 3600.0
    _rings: dict[str, Ring] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.resolution_s <= 0 or self.retention_s < self.resolution_s:
            raise ValueError("need resolution_s > 0 and retention_s >= resolution_s")

    @property
    def capacity(self) -> int:
        return math.ceil(self.retention_s / self.resolution_s)

    def ring(self, endpoint: str) -> Ring:
        ring = self._rings.get(endpoint)
        if ring is None:
            ring = self._rings[endpoint] = Ring(self.capacity)
        return ring

    def get(self, endpoint: str) -> Ring | None:
        return self._rings.get(endpoint)

    def forget(self, endpoint: str) -> None:
        self._rings.pop(endpoint, None)

    def endpoints(self) -> list[str]:
        return sorted(self._rings)


class TimeSeriesSampler:
    """Turns counters into points; ``sample`` is called by the observability loop every resolution_s."""

    def __init__(self, hub: MetricsHub, ledger: CostLedger, store: TimeSeriesStore) -> None:
        self._hub = hub
        self._ledger = ledger
        self._store = store
        self._marks: dict[EntityKey, _EntityMark] = {}
        self._last_sample: float | None = None  # monotonic

    def sample(self, wall_now: float, monotonic_now: float) -> None:
        interval = (monotonic_now - self._last_sample) if self._last_sample is not None else None
        self._last_sample = monotonic_now
        by_endpoint: dict[str, list[EntityKey]] = {}
        for key in self._hub.entities():
            by_endpoint.setdefault(key.endpoint, []).append(key)
        for endpoint, keys in by_endpoint.items():
            self._store.ring(endpoint).append(wall_now, self._point(endpoint, keys, interval))
        live = {key for keys in by_endpoint.values() for key in keys}
        for key in [key for key in self._marks if key not in live]:
            del self._marks[key]

    def _point(self, endpoint: str, keys: list[EntityKey], interval: float | None) -> dict[str, float | None]:
        classes = dict.fromkeys(STATUS_CLASSES, 0)
        duration_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        cold_starts = 0
        desired = ready = starting = queued = in_flight = 0
        for key in keys:
            stats = self._hub.requests(key)
            lifecycle = self._hub.lifecycle(key)
            now = _EntityMark(by_class(stats.by_status), list(stats.latency_counts), lifecycle.cold_starts)
            mark = self._marks.get(key)
            if mark is None and interval is not None:
                # Born since the previous sample: everything it counted happened in this interval.
                mark = _EntityMark({}, [0] * len(now.duration_counts), 0)
            if mark is not None:
                for name, count in now.by_class.items():
                    classes[name] = classes.get(name, 0) + count - mark.by_class.get(name, 0)
                for index, (current, previous) in enumerate(
                        zip(now.duration_counts, mark.duration_counts, strict=True)):
                    duration_counts[index] += current - previous
                cold_starts += now.cold_starts - mark.cold_starts
            self._marks[key] = now
            counts = self._hub.replicas(key)
            desired += counts.desired
            ready += counts.ready
            starting += counts.starting
            entity_in_flight, entity_queued = self._hub.load(key)
            in_flight += entity_in_flight
            queued += entity_queued
        requests = sum(classes.values())
        cost = self._ledger.endpoint_summary(endpoint)
        p50 = quantile_from_counts(LATENCY_BUCKETS_S, duration_counts, 0.50)
        p99 = quantile_from_counts(LATENCY_BUCKETS_S, duration_counts, 0.99)
        return {
            # The first point has no interval before it: no rate to report yet.
            "requests_per_s": requests / interval if interval else None,
            "p50_ms": p50 * 1000.0 if p50 is not None else None,
            "p99_ms": p99 * 1000.0 if p99 is not None else None,
            "error_rate": classes["5xx"] / requests if requests else None,
            "client_error_rate": classes["4xx"] / requests if requests else None,
            "replicas_desired": desired,
            "replicas_ready": ready,
            "replicas_starting": starting,
            "queue_depth": queued,
            "in_flight": in_flight,
            "cold_starts": cold_starts if interval else None,
            "cost": cost.cost,
            "cost_per_hour": cost.hourly_rate,
        }
