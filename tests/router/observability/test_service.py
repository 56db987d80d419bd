"""Observability wired to a real autoscaler loop (fake backend, fake clock): cost from replica-seconds,
cold starts, scaling decisions and the time series, as time moves."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from autoscaler.loop import Autoscaler
from autoscaler.spec import AutoscalingSpec, EntitySpec
from autoscaler.testing import FakeBackend, FakeClock, RecordingListener
from autoscaler.types import EntityKey
from router.dataplane.stats import DataPlaneStats
from router.observability._views import overview as overview_json
from router.observability._views import timeseries_json
from router.observability.cost import CostSettings
from router.observability.service import EndpointView, EntityView, Observability, ObservabilitySettings

IDLE = EntityKey("idle", "idle-1")
FLOOR = EntityKey("floor", "floor-1")
BURST = EntityKey("burst", "burst-1")
SCALING = AutoscalingSpec(stable_window_s=10.0, scale_to_zero_grace_s=5.0, max_provisioned_concurrency=64)
# 3.6 per replica-hour = 0.001 per replica-second: costs read as replica-seconds / 1000.
PRICES = CostSettings(prices_per_replica_hour={"CPU": 3.6, "GPU_SMALL": 36.0})


def spec(name: str, workload_type: str = "CPU", **scaling: object) -> EntitySpec:
    autoscaling = dataclasses.replace(SCALING, **scaling)  # type: ignore[arg-type]
    return EntitySpec(f"file:///models/{name}", name, workload_type=workload_type, autoscaling=autoscaling)


@dataclass
class Catalog:
    views: list[EndpointView] = field(default_factory=list)

    def endpoint_views(self) -> Sequence[EndpointView]:
        return self.views


@dataclass
class Harness:
    clock: FakeClock
    backend: FakeBackend
    scaler: Autoscaler
    observability: Observability
    stats: DataPlaneStats
    catalog: Catalog

    async def run_for(self, seconds: int, key: EntityKey | None = None, in_flight: int = 0) -> None:
        for _ in range(seconds):
            if key is not None:
                self.scaler.report(key, in_flight, 0)
            await self.clock.advance(1.0)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    clock = FakeClock()
    backend = FakeBackend(clock, start_delay_s=0.5)
    stats = DataPlaneStats()
    observability = Observability(settings=ObservabilitySettings(), cost_settings=PRICES, stats=stats,
                                  state_dir=tmp_path, clock=clock)
    scaler = Autoscaler(backend, clock, observability.listener(RecordingListener()), tick_s=2.0)
    catalog = Catalog([
        EndpointView("idle", ready=True, entities=(EntityView("idle-1"),)),
        EndpointView("floor", ready=True, entities=(EntityView("floor-1", "GPU_SMALL"),)),
        EndpointView("burst", ready=True, entities=(EntityView("burst-1"),)),
    ])
    observability.bind(catalog=catalog, autoscaler=scaler)
    scaler.apply(IDLE, spec("idle-1"))
    scaler.apply(FLOOR, spec("floor-1", "GPU_SMALL", min_provisioned_concurrency=8))  # 2 replicas, always
    scaler.apply(BURST, spec("burst-1"))
    await scaler.start()
    await observability.start()
    try:
        yield Harness(clock, backend, scaler, observability, stats, catalog)
    finally:
        await observability.close()
        await scaler.stop()


async def test_an_idle_scale_to_zero_endpoint_costs_nothing(harness: Harness) -> None:
    await harness.run_for(120)
    cost = harness.observability.endpoint_cost("idle")
    assert cost["total"] == 0.0 and cost["replica_seconds"] == 0.0 and cost["hourly_rate"] == 0.0
    assert cost["per_1k_inferences"] is None
    overview = overview_json(harness.observability, lambda name: True)
    idle = next(e for e in overview["endpoints"] if e["name"] == "idle")
    assert idle["scaled_to_zero"] is True and idle["replicas"]["ready"] == 0


async def test_a_reserved_floor_costs_its_replica_seconds(harness: Harness) -> None:
    await harness.run_for(100)
    cost = harness.observability.endpoint_cost("floor")
    # 2 replicas from t=0.5 (ready after the start delay; starting replicas cost too) for 100 s,
    # sampled every second: 200 replica-seconds give or take one sample of 2 replicas.
    assert cost["replica_seconds"] == pytest.approx(200.0, abs=2.5)
    assert cost["total"] == pytest.approx(cost["replica_seconds"] / 100.0, rel=1e-3)  # GPU_SMALL: 0.01/s
    assert cost["hourly_rate"] == pytest.approx(72.0)
    for _ in range(500):
        harness.stats.record(FLOOR, 200, 0.01)
    harness.stats.record(FLOOR, 500, 0.01)  # failures are not inferences
    cost = harness.observability.endpoint_cost("floor")
    assert cost["inferences"] == 500
    assert cost["per_1k_inferences"] == pytest.approx(cost["total"] * 2, rel=1e-6)
    entity_cost = harness.observability.entity_cost(FLOOR)
    assert entity_cost["total"] == cost["total"] and entity_cost["currency"] == "USD"


async def test_cold_starts_scaling_decisions_and_the_time_series(harness: Harness) -> None:
    await harness.run_for(10)
    harness.scaler.poke(BURST)
    await harness.run_for(1)
    lifecycle = harness.observability.hub.lifecycle(BURST)
    assert lifecycle.cold_starts == 1
    assert lifecycle.cold_start_duration.total == pytest.approx(0.5)  # the fake backend's start delay
    await harness.run_for(12, BURST, in_flight=20)
    await harness.run_for(30)
    assert harness.backend.running(BURST) == []
    assert lifecycle.scale_ups >= 2 and lifecycle.scale_downs >= 1
    assert lifecycle.cold_starts == 1  # the replicas added under load found one already ready
    # A second scale from zero is a second cold start.
    harness.scaler.poke(BURST)
    await harness.run_for(2)
    assert lifecycle.cold_starts == 2
    cost = harness.observability.endpoint_cost("burst")
    assert cost["replica_seconds"] > 0

    series = timeseries_json(harness.observability, "burst")
    points = series["series"]
    assert len(points["t"]) == pytest.approx(55 / 5, abs=1)  # a point every 5 s
    assert max(v for v in points["replicas_ready"] if v is not None) == 8
    assert sum(v for v in points["cold_starts"] if v is not None) == 2
    assert points["cost"][-1] == pytest.approx(cost["total"], rel=0.2)
    reasons = [event["reason"] for event in series["scaling_events"]]
    assert any(reason.startswith("panic:") for reason in reasons)
    assert series["scaling_events"][0]["timestamp_ms"] <= series["scaling_events"][-1]["timestamp_ms"]


async def test_a_deleted_endpoint_is_forgotten_and_cost_is_saved(harness: Harness, tmp_path: Path) -> None:
    await harness.run_for(10)
    assert "floor" in harness.observability.known_endpoints()
    harness.catalog.views = [view for view in harness.catalog.views if view.name != "floor"]
    await harness.scaler.remove(FLOOR)
    await harness.run_for(2)
    assert "floor" not in harness.observability.known_endpoints()
    assert harness.observability.timeseries.get("floor") is None
    assert b'endpoint="floor"' not in harness.observability.hub.exposition()
    await harness.observability.close()
    assert (tmp_path / "cost.json").exists()


async def test_capture_follows_the_catalog(harness: Harness) -> None:
    harness.catalog.views = [dataclasses.replace(view, auto_capture_config={"enabled": True})
                             if view.name == "burst" else view for view in harness.catalog.views]
    await harness.run_for(1)
    assert harness.observability.tables.enabled("burst")
    assert not harness.observability.tables.enabled("idle")


async def test_cost_replica_seconds_and_inferences_survive_a_restart_together(
    harness: Harness, tmp_path: Path
) -> None:
    await harness.run_for(100)
    for _ in range(500):
        harness.stats.record(FLOOR, 200, 0.01)
    before = harness.observability.endpoint_cost("floor")
    assert before["inferences"] == 500
    await harness.observability.close()  # saves the totals, as a gateway shutting down does

    # A new gateway process: nothing answered yet in this one.
    restarted = Observability(settings=ObservabilitySettings(), cost_settings=PRICES, stats=DataPlaneStats(),
                              state_dir=tmp_path, clock=harness.clock)
    restarted.bind(catalog=harness.catalog, autoscaler=harness.scaler)
    after = restarted.endpoint_cost("floor")
    assert after["replica_seconds"] == pytest.approx(before["replica_seconds"], rel=1e-3)
    assert after["total"] == pytest.approx(before["total"], rel=1e-3)
    # Cost per 1,000 inferences means the same after a restart: the count came back with the cost.
    assert after["inferences"] == 500
    assert after["per_1k_inferences"] == pytest.approx(before["per_1k_inferences"], rel=1e-3)
    await restarted.close()
