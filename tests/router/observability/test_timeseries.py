"""The in-process ring buffer and the sampler that fills it from counters."""

from __future__ import annotations

import pytest

from autoscaler.types import EntityKey
from router.dataplane.stats import DataPlaneStats
from router.observability.cost import CostLedger, CostSettings
from router.observability.metrics import MetricsHub, ReplicaCounts
from router.observability.timeseries import FIELDS, Ring, TimeSeriesSampler, TimeSeriesStore

A = EntityKey("fraud", "fraud-1")
B = EntityKey("fraud", "fraud-2")


def test_default_store_holds_an_hour_at_five_seconds() -> None:
    store = TimeSeriesStore()
    assert store.capacity == 720
    ring = store.ring("fraud")
    for second in range(0, 2 * 3600, 5):
        ring.append(float(second), {"requests_per_s": float(second)})
    assert len(ring) == 720
    series = ring.series()
    assert series["t"][0] == 3600.0 and series["t"][-1] == 7195.0
    assert series["requests_per_s"] == series["t"]
    assert set(series) == {"t", *FIELDS}


def test_ring_order_since_and_last() -> None:
    ring = Ring(3, fields=("x",))
    assert ring.last() is None
    for t in (1.0, 2.0, 3.0, 4.0):
        ring.append(t, {"x": t * 10})
    assert ring.series() == {"t": [2.0, 3.0, 4.0], "x": [20.0, 30.0, 40.0]}
    assert ring.series(since=2.5) == {"t": [3.0, 4.0], "x": [30.0, 40.0]}
    assert ring.last() == {"t": 4.0, "x": 40.0}


def test_invalid_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Ring(0)
    with pytest.raises(ValueError, match="resolution"):
        TimeSeriesStore(resolution_s=10, retention_s=5)


class Fleet:
    def __init__(self) -> None:
        self.counts = {A: ReplicaCounts(2, 1, 1, 0), B: ReplicaCounts(1, 0, 1, 0)}
        self.load = {A: (2, 5), B: (1, 0)}

    def replica_counts(self, key: EntityKey) -> ReplicaCounts:
        return self.counts[key]

    def concurrency(self, entity: EntityKey) -> tuple[int, int]:
        return self.load[entity]


def test_points_are_rates_and_quantiles_over_the_interval() -> None:
    stats = DataPlaneStats()
    hub = MetricsHub(stats)
    fleet = Fleet()
    hub.replica_source = fleet
    hub.load_source = fleet
    hub.track(A)
    hub.track(B)
    ledger = CostLedger(CostSettings(prices_per_replica_hour={"CPU": 3.6}))
    store = TimeSeriesStore()
    sampler = TimeSeriesSampler(hub, ledger, store)
    stats.record(A, 200, 0.004)  # before the first sample: not part of any interval
    ledger.observe(A, "CPU", 2, now=0.0)
    sampler.sample(wall_now=1000.0, monotonic_now=0.0)
    first = store.ring("fraud").last()
    assert first is not None and first["requests_per_s"] is None and first["p50_ms"] is None

    # 5 s: 40 fast (A), 9 fast (B), 1 server error (B); one cold start.
    for _ in range(40):
        stats.record(A, 200, 0.004)
    for _ in range(9):
        stats.record(B, 200, 0.004)
    stats.record(B, 503, 0.9)
    hub.lifecycle(A).record_cold_start(0.3)
    ledger.settle(5.0)
    sampler.sample(wall_now=1005.0, monotonic_now=5.0)
    point = store.ring("fraud").last()
    assert point is not None
    assert point["requests_per_s"] == pytest.approx(50 / 5.0)
    assert point["error_rate"] == pytest.approx(1 / 50)
    assert point["client_error_rate"] == 0.0
    # 49 of 50 in (0.0025, 0.005]: the median interpolates inside that bucket, p99 too (rank 49.5 > 49
    # lands in the bucket of the 0.9 s request, (0.5, 1.0]).
    assert 2.5 < point["p50_ms"] < 5.0  # type: ignore[operator]
    assert 500.0 < point["p99_ms"] <= 1000.0  # type: ignore[operator]
    assert point["replicas_desired"] == 3 and point["replicas_ready"] == 2 and point["replicas_starting"] == 1
    assert point["queue_depth"] == 5 and point["in_flight"] == 3
    assert point["cold_starts"] == 1
    # 2 replicas x 5 s at 3.6/h = 0.01.
    assert point["cost"] == pytest.approx(0.01)
    assert point["cost_per_hour"] == pytest.approx(7.2)

    # A quiet interval: no requests, so no latency and no error rate, but levels are still there.
    sampler.sample(wall_now=1010.0, monotonic_now=10.0)
    quiet = store.ring("fraud").last()
    assert quiet is not None
    assert quiet["requests_per_s"] == 0.0 and quiet["p99_ms"] is None and quiet["error_rate"] is None
    assert quiet["cold_starts"] == 0 and quiet["replicas_ready"] == 2


def test_an_entity_born_between_samples_counts_from_zero() -> None:
    stats = DataPlaneStats()
    hub = MetricsHub(stats)
    store = TimeSeriesStore()
    sampler = TimeSeriesSampler(hub, CostLedger(), store)
    hub.track(A)
    sampler.sample(0.0, 0.0)
    stats.record(B, 200, 0.01)
    stats.record(B, 200, 0.01)
    sampler.sample(5.0, 5.0)
    point = store.ring("fraud").last()
    assert point is not None and point["requests_per_s"] == pytest.approx(0.4)
