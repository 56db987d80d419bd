"""Request stats: bucket boundaries, cumulative export, per-entity and unrouted counts."""

from __future__ import annotations

import pytest

from autoscaler.types import EntityKey
from router.dataplane.stats import LATENCY_BUCKETS_S, DataPlaneStats, RequestStats

A = EntityKey("ep", "a")


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [
        (0.0, 0),
        (0.001, 0),
        (0.0011, 1),
        (0.05, 5),
        (60.0, len(LATENCY_BUCKETS_S) - 1),
        (61.0, len(LATENCY_BUCKETS_S)),
    ],
    ids=[
        "zero",
        "on the first bound",
        "just above it",
        "on a middle bound",
        "on the last bound",
        "above all",
    ],
)
def test_latency_lands_in_the_bucket_whose_bound_it_does_not_exceed(seconds: float, bucket: int) -> None:
    stats = RequestStats()
    stats.record(200, seconds)
    assert stats.latency_counts[bucket] == 1 and sum(stats.latency_counts) == 1


def test_cumulative_buckets_match_a_prometheus_histogram() -> None:
    stats = RequestStats()
    for seconds in (0.0005, 0.003, 0.003, 120.0):
        stats.record(200, seconds)
    cumulative = dict(stats.cumulative_buckets())
    assert cumulative[0.001] == 1 and cumulative[0.005] == 3 and cumulative[60.0] == 3
    assert cumulative[float("inf")] == 4 == stats.count
    assert stats.latency_sum_s == pytest.approx(120.0065)


def test_dataplane_stats_split_by_entity_and_keep_unrouted_apart() -> None:
    stats = DataPlaneStats()
    stats.record(A, 200, 0.01)
    stats.record(A, 503, 0.5)
    stats.record(None, 404, 0.001)
    assert stats.entity(A).by_status == {200: 1, 503: 1} and stats.entity(A).errors() == 1
    assert stats.unrouted_by_status == {404: 1}
    assert [entity for entity, _ in stats.items()] == [A]
    stats.forget(A)
    assert stats.items() == []
