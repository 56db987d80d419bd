"""The cost ledger: replica-seconds integrated over time, priced per workload type."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from autoscaler.types import EntityKey
from router.observability.cost import DEFAULT_PRICES_PER_REPLICA_HOUR, CostLedger, CostSettings

KEY = EntityKey("fraud", "fraud-1")


def test_two_replicas_for_90_seconds_at_the_cpu_price() -> None:
    ledger = CostLedger(CostSettings(prices_per_replica_hour={"CPU": 0.10}))
    ledger.observe(KEY, "CPU", 2, now=100.0)
    ledger.observe(KEY, "CPU", 2, now=190.0)
    summary = ledger.summary(KEY)
    # 2 x 90 s = 180 replica-seconds = 0.05 replica-hours x 0.10 = 0.005.
    assert summary.replica_seconds == pytest.approx(180.0)
    assert summary.cost == pytest.approx(0.005)
    assert summary.hourly_rate == pytest.approx(0.20)
    assert summary.per_thousand(500) == pytest.approx(0.01)
    assert summary.per_thousand(0) is None


def test_count_changes_charge_the_previous_count_for_the_elapsed_time() -> None:
    ledger = CostLedger()
    ledger.observe(KEY, "GPU_SMALL", 1, now=0.0)
    ledger.observe(KEY, "GPU_SMALL", 3, now=60.0)  # 1 x 60
    ledger.observe(KEY, "GPU_SMALL", 0, now=120.0)  # 3 x 60
    ledger.observe(KEY, "GPU_SMALL", 0, now=10_000.0)  # 0 x lots
    summary = ledger.summary(KEY)
    assert summary.replica_seconds == pytest.approx(240.0)
    assert summary.cost == pytest.approx(240.0 / 3600.0 * DEFAULT_PRICES_PER_REPLICA_HOUR["GPU_SMALL"])
    assert summary.hourly_rate == 0.0


def test_an_idle_scale_to_zero_entity_costs_nothing() -> None:
    ledger = CostLedger()
    for second in range(0, 3600, 5):
        ledger.observe(KEY, "CPU", 0, now=float(second))
    ledger.settle(7200.0)
    assert ledger.summary(KEY).cost == 0.0
    assert ledger.endpoint_summary("fraud").replica_seconds == 0.0


def test_endpoint_summary_adds_its_entities_only() -> None:
    ledger = CostLedger(CostSettings(prices_per_replica_hour={"CPU": 1.0}))
    for key in (KEY, EntityKey("fraud", "fraud-2"), EntityKey("churn", "churn-1")):
        ledger.observe(key, "CPU", 1, now=0.0)
    ledger.settle(36.0)
    assert ledger.endpoint_summary("fraud").cost == pytest.approx(0.02)
    assert ledger.endpoint_summary("fraud").replicas == 2
    assert ledger.endpoint_summary("nothing").cost == 0.0


def test_prices_merge_over_the_defaults_and_unknown_types_fall_back() -> None:
    settings = CostSettings(prices_per_replica_hour={"cpu": 0.25})
    assert settings.price_per_hour("CPU") == 0.25
    assert settings.price_per_hour("GPU_LARGE") == DEFAULT_PRICES_PER_REPLICA_HOUR["GPU_LARGE"]
    assert settings.price_per_hour("QUANTUM_XL") == 0.25  # priced as the fallback type, CPU


def test_prices_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROSERVE_COST_PRICES_PER_REPLICA_HOUR", '{"GPU_MEDIUM": 2.5}')
    monkeypatch.setenv("ZEROSERVE_COST_CURRENCY", "EUR")
    settings = CostSettings()
    assert settings.price_per_hour("GPU_MEDIUM") == 2.5
    assert settings.currency == "EUR"


def test_a_negative_price_is_rejected() -> None:
    with pytest.raises(ValidationError, match="GPU_SMALL"):
        CostSettings(prices_per_replica_hour={"GPU_SMALL": -1.0})


def test_totals_survive_a_restart(tmp_path: Path) -> None:
    ledger = CostLedger()
    ledger.observe(KEY, "CPU", 2, now=0.0)
    ledger.settle(1800.0)
    ledger.save(tmp_path / "cost.json")
    restored = CostLedger()
    restored.load(tmp_path / "cost.json", now=5.0)
    assert restored.summary(KEY).replica_seconds == pytest.approx(3600.0)
    assert restored.summary(KEY).cost == pytest.approx(0.10)
    assert restored.summary(KEY).replicas == 0  # what runs now is for the autoscaler to say
    restored.observe(KEY, "CPU", 1, now=5.0)
    restored.settle(41.0)
    assert restored.summary(KEY).replica_seconds == pytest.approx(3636.0)


def test_a_missing_or_corrupt_file_starts_from_zero(tmp_path: Path) -> None:
    ledger = CostLedger()
    ledger.load(tmp_path / "absent.json", now=0.0)
    (tmp_path / "bad.json").write_text("{not json")
    ledger.load(tmp_path / "bad.json", now=0.0)
    assert ledger.summary(KEY).cost == 0.0
