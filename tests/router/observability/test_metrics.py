"""Metric values after known traffic, read back through Prometheus' own text parser."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoscaler.types import EntityKey
from router.dataplane.stats import DataPlaneStats
from router.observability.metrics import (
    MetricsHub,
    ReplicaCounts,
    by_class,
    quantile_from_counts,
    status_class,
)

A = EntityKey("fraud", "fraud-1")
B = EntityKey("fraud", "fraud-2")
OTHER = EntityKey("churn", "churn-1")


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


class Load:
    def concurrency(self, entity: EntityKey) -> tuple[int, int]:
        return {A: (3, 7), B: (1, 0)}.get(entity, (0, 0))


class Replicas:
    def replica_counts(self, key: EntityKey) -> ReplicaCounts:
        counts = {A: ReplicaCounts(desired=4, starting=1, ready=2, draining=1)}
        return counts.get(key, ReplicaCounts(0, 0, 0, 0))


@pytest.fixture
def hub() -> MetricsHub:
    stats = DataPlaneStats()
    # 8 fast successes, 1 slow one, 2 bad requests, 1 queue timeout, 1 client gone.
    for _ in range(8):
        stats.record(A, 200, 0.004)
    stats.record(A, 200, 0.3)
    stats.record(A, 400, 0.002)
    stats.record(A, 400, 0.002)
    stats.record(A, 503, 30.0)
    stats.record(A, 499, 1.0)
    for _ in range(9):
        stats.entity(A).record_queue_wait(0.0)
    stats.entity(A).record_upstream(0.003)
    stats.entity(A).retries += 2
    stats.record(B, 200, 0.02)
    stats.record(OTHER, 200, 0.01)
    stats.record(None, 404, 0.0001)
    hub = MetricsHub(stats)
    hub.load_source = Load()
    hub.replica_source = Replicas()
    hub.track(A, "GPU_SMALL")
    hub.track(B)
    hub.track(OTHER)
    return hub


def test_requests_by_status_class_and_histograms(hub: MetricsHub) -> None:
    found = samples(hub.exposition())
    labels = {"endpoint": "fraud", "served_entity": "fraud-1"}
    assert value(found, "zeroserve_requests_total", status_class="2xx", **labels) == 9
    assert value(found, "zeroserve_requests_total", status_class="4xx", **labels) == 3  # 400, 400, 499
    assert value(found, "zeroserve_requests_total", status_class="5xx", **labels) == 1
    assert value(found, "zeroserve_request_duration_seconds_count", **labels) == 13
    assert value(found, "zeroserve_request_duration_seconds_sum", **labels) == pytest.approx(
        8 * 0.004 + 0.3 + 2 * 0.002 + 30.0 + 1.0)
    # Cumulative buckets: 2 x 2 ms <= 0.0025, 8 x 4 ms <= 0.005, the 0.3 s one > 0.25.
    assert value(found, "zeroserve_request_duration_seconds_bucket", le="0.0025", **labels) == 2
    assert value(found, "zeroserve_request_duration_seconds_bucket", le="0.005", **labels) == 10
    assert value(found, "zeroserve_request_duration_seconds_bucket", le="0.25", **labels) == 10
    assert value(found, "zeroserve_request_duration_seconds_bucket", le="0.5", **labels) == 11
    assert value(found, "zeroserve_request_duration_seconds_bucket", le="+Inf", **labels) == 13
    assert value(found, "zeroserve_queue_wait_seconds_count", **labels) == 9
    assert value(found, "zeroserve_upstream_duration_seconds_count", **labels) == 1
    assert value(found, "zeroserve_upstream_duration_seconds_bucket", le="0.0025", **labels) == 0
    assert value(found, "zeroserve_upstream_duration_seconds_bucket", le="0.005", **labels) == 1
    assert value(found, "zeroserve_upstream_retries_total", **labels) == 2
    assert value(found, "zeroserve_unrouted_requests_total", status_class="4xx") == 1


def test_live_gauges_come_from_their_sources(hub: MetricsHub) -> None:
    found = samples(hub.exposition())
    labels = {"endpoint": "fraud", "served_entity": "fraud-1"}
    assert value(found, "zeroserve_in_flight_requests", **labels) == 3
    assert value(found, "zeroserve_queue_depth", **labels) == 7
    assert value(found, "zeroserve_replicas", state="starting", **labels) == 1
    assert value(found, "zeroserve_replicas", state="ready", **labels) == 2
    assert value(found, "zeroserve_replicas", state="draining", **labels) == 1
    assert value(found, "zeroserve_replicas_desired", **labels) == 4


def test_lifecycle_cost_and_cache_counters(hub: MetricsHub) -> None:
    hub.lifecycle(A).record_cold_start(0.12)
    hub.lifecycle(A).record_cold_start(2.0)
    hub.lifecycle(A).record_scaling(0, 1)
    hub.lifecycle(A).record_scaling(1, 3)
    hub.lifecycle(A).record_scaling(3, 1)
    hub.lifecycle(A).record_scaling(1, 1)  # no change: not a scaling decision
    hub.replica_seconds = lambda key: 90.0 if key == A else 0.0
    hub.cost = lambda key: 0.0132 if key == A else 0.0
    hub.cache_counters = lambda: (5, 2, 123456)
    found = samples(hub.exposition())
    labels = {"endpoint": "fraud", "served_entity": "fraud-1"}
    assert value(found, "zeroserve_cold_starts_total", **labels) == 2
    assert value(found, "zeroserve_cold_start_duration_seconds_bucket", le="0.25", **labels) == 1
    assert value(found, "zeroserve_cold_start_duration_seconds_sum", **labels) == pytest.approx(2.12)
    assert value(found, "zeroserve_scaling_decisions_total", direction="up", **labels) == 2
    assert value(found, "zeroserve_scaling_decisions_total", direction="down", **labels) == 1
    assert value(found, "zeroserve_replica_seconds_total", workload_type="GPU_SMALL", **labels) == 90.0
    assert value(found, "zeroserve_cost_total", workload_type="GPU_SMALL", **labels) == pytest.approx(0.0132)
    assert value(found, "zeroserve_model_cache_hits_total") == 5
    assert value(found, "zeroserve_model_cache_misses_total") == 2
    assert value(found, "zeroserve_model_cache_fetched_bytes_total") == 123456


def test_endpoint_text_holds_only_that_endpoint(hub: MetricsHub) -> None:
    found = samples(hub.endpoint_exposition("fraud"))
    endpoints = {dict(labels).get("endpoint") for _, labels in found}
    assert endpoints == {"fraud"}
    assert value(found, "zeroserve_requests_total", endpoint="fraud", served_entity="fraud-2",
                 status_class="2xx") == 1
    # Gateway-wide families stay out of an endpoint's text.
    assert not any(name.startswith("zeroserve_unrouted") for name, _ in found)


def test_a_tracked_entity_without_traffic_exports_zeros() -> None:
    hub = MetricsHub()
    hub.track(EntityKey("idle", "idle-1"))
    found = samples(hub.exposition())
    assert value(found, "zeroserve_requests_total", endpoint="idle", served_entity="idle-1",
                 status_class="2xx") == 0
    hub.untrack(EntityKey("idle", "idle-1"))
    assert not any(dict(labels).get("endpoint") == "idle" for _, labels in samples(hub.exposition()))


@pytest.mark.parametrize(
    ("counts", "q", "expected"),
    [
        pytest.param([0, 0, 0], 0.5, None, id="empty"),
        # 10 values in (0.005, 0.01]: p50 halfway through the bucket.
        pytest.param([0, 10, 0], 0.5, 0.0075, id="middle-of-bucket"),
        pytest.param([10, 0, 0], 1.0, 0.005, id="top-of-first-bucket"),
        # 99 fast, 1 slow: p99 still in the first bucket, at its top.
        pytest.param([99, 0, 1], 0.99, 0.005, id="p99-fast"),
        pytest.param([50, 0, 50], 0.99, 0.01, id="past-last-bound-clamped"),
    ],
)
def test_quantile_from_counts(counts: list[int], q: float, expected: float | None) -> None:
    result = quantile_from_counts((0.005, 0.01), counts, q)
    assert result == (pytest.approx(expected) if expected is not None else None)


def test_status_classes() -> None:
    assert status_class(204) == "2xx"
    assert status_class(499) == "4xx"
    assert status_class(42) == "other"
    assert by_class({200: 3, 201: 1, 503: 2}) == {"1xx": 0, "2xx": 4, "3xx": 0, "4xx": 0, "5xx": 2}
