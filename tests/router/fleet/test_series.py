from __future__ import annotations

from router.fleet.series import fleet_overview, merge_points, merge_series
from router.observability.cost import CostSummary, cost_fields


def test_points_add_rates_share_replicas_and_weigh_latency() -> None:
    merged = merge_points([
        {"requests_per_s": 30.0, "p99_ms": 10.0, "replicas_ready": 2.0, "in_flight": 3.0, "cost": 1.0},
        {"requests_per_s": 10.0, "p99_ms": 30.0, "replicas_ready": 2.0, "in_flight": None, "cost": 0.5},
    ])
    assert merged["requests_per_s"] == 40.0 and merged["in_flight"] == 3.0 and merged["cost"] == 1.5
    assert merged["replicas_ready"] == 2.0  # the leader's view on both: not twice the replicas
    assert merged["p99_ms"] == (30 * 10 + 10 * 30) / 40
    idle = merge_points([{"requests_per_s": 0.0, "p50_ms": None}, {"requests_per_s": 0.0, "p50_ms": 2.0}])
    assert idle["p50_ms"] == 2.0


def test_series_line_up_by_step() -> None:
    one = {"t": [100.0, 105.0, 110.0], "requests_per_s": [1.0, 2.0, 3.0]}
    two = {"t": [101.2, 106.1], "requests_per_s": [10.0, 20.0]}
    merged = merge_series([one, two], 5.0)
    assert merged["requests_per_s"] == [11.0, 22.0, 3.0]
    assert merged["t"] == [101.2, 106.1, 110.0]
    assert merge_series([], 5.0) == {"t": []}


def test_overview_adds_every_gateways_share() -> None:
    def cost(total: float, inferences: int) -> dict[str, object]:
        return cost_fields(CostSummary(replica_seconds=total * 10, cost=total, hourly_rate=0.0, replicas=0),
                           inferences, "USD")

    own = {"endpoints": [{"name": "fraud", "requests_per_s": 5.0, "p50_ms": 2.0, "p99_ms": 4.0,
                          "error_rate": 0.0, "cost": cost(1.0, 1000),
                          "served_entities": [{"name": "m", "cost": cost(1.0, 1000)}]}]}
    peer = {"endpoints": {"fraud": {"last": {"requests_per_s": 15.0, "p50_ms": 4.0, "p99_ms": 8.0,
                                             "error_rate": 0.1},
                                    "cost": cost(0.0, 3000), "entities": {"m": cost(0.0, 3000)}}}}
    (fraud,) = fleet_overview(own, [peer])["endpoints"]
    assert fraud["requests_per_s"] == 20.0 and fraud["p50_ms"] == (5 * 2 + 15 * 4) / 20
    assert fraud["cost"]["total"] == 1.0 and fraud["cost"]["inferences"] == 4000
    assert fraud["cost"]["per_1k_inferences"] == 0.25
    assert fraud["served_entities"][0]["cost"]["inferences"] == 4000
