from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import pytest

from autoscaler.spec import AutoscalingSpec, BatchingSpec, EntitySpec, PrewarmWindow, WorkloadSize
from runtime.errors import InvalidParameterValue


def test_defaults_are_the_issue_defaults() -> None:
    spec = AutoscalingSpec()
    assert spec.container_concurrency == 4
    assert spec.target_utilization == 0.7
    assert spec.stable_window_s == 60.0
    assert spec.panic_window_s == pytest.approx(6.0)
    assert spec.panic_threshold == 2.0
    assert spec.max_scale_up_rate == 1000.0
    assert spec.max_scale_down_rate == 2.0
    assert spec.scale_down_delay_s == 0.0
    assert spec.scale_to_zero_grace_s == 30.0
    assert spec.target_per_replica == pytest.approx(2.8)
    assert spec.workload_size is WorkloadSize.SMALL
    assert spec.max_concurrency == 4


@dataclass(frozen=True)
class ReplicaBoundsCase:
    id: str
    settings: dict[str, Any]
    floor: int
    ceiling: int


BOUNDS_CASES = [
    ReplicaBoundsCase("scale-to-zero-small", {}, floor=0, ceiling=1),
    ReplicaBoundsCase("no-scale-to-zero-floor-1", {"scale_to_zero_enabled": False}, floor=1, ceiling=1),
    ReplicaBoundsCase("medium-16-over-4", {"workload_size": WorkloadSize.MEDIUM}, floor=0, ceiling=4),
    ReplicaBoundsCase("large-64-over-4", {"workload_size": "Large"}, floor=0, ceiling=16),
    ReplicaBoundsCase("large-lowercase", {"workload_size": "large"}, floor=0, ceiling=16),
    ReplicaBoundsCase("explicit-max-rounds-up", {"max_provisioned_concurrency": 10}, floor=0, ceiling=3),
    ReplicaBoundsCase("reserved-floor-rounds-up",
                      {"scale_to_zero_enabled": False, "min_provisioned_concurrency": 10,
                       "max_provisioned_concurrency": 40}, floor=3, ceiling=10),
    ReplicaBoundsCase("reserved-floor-holds-with-scale-to-zero",
                      {"min_provisioned_concurrency": 8, "max_provisioned_concurrency": 8},
                      floor=2, ceiling=2),
    ReplicaBoundsCase("reserved-floor-exact-multiple",
                      {"min_provisioned_concurrency": 4, "max_provisioned_concurrency": 64},
                      floor=1, ceiling=16),
    ReplicaBoundsCase("big-replicas",
                      {"container_concurrency": 16, "max_provisioned_concurrency": 64,
                       "min_provisioned_concurrency": 17}, floor=2, ceiling=4),
    ReplicaBoundsCase("ceiling-never-below-floor-without-scale-to-zero",
                      {"container_concurrency": 8, "scale_to_zero_enabled": False}, floor=1, ceiling=1),
]


@pytest.mark.parametrize("case", BOUNDS_CASES, ids=lambda case: case.id)
def test_floor_and_ceiling(case: ReplicaBoundsCase) -> None:
    spec = AutoscalingSpec(**case.settings)
    assert (spec.floor_replicas, spec.ceiling_replicas) == (case.floor, case.ceiling)


@dataclass(frozen=True)
class InvalidCase:
    id: str
    settings: dict[str, Any]
    field: str


INVALID_CASES = [
    InvalidCase("concurrency-zero", {"container_concurrency": 0}, "container_concurrency"),
    InvalidCase("utilization-zero", {"target_utilization": 0.0}, "target_utilization"),
    InvalidCase("utilization-over-one", {"target_utilization": 1.01}, "target_utilization"),
    InvalidCase("utilization-nan", {"target_utilization": float("nan")}, "target_utilization"),
    InvalidCase("stable-window-zero", {"stable_window_s": 0}, "stable_window_s"),
    InvalidCase("stable-window-inf", {"stable_window_s": float("inf")}, "stable_window_s"),
    InvalidCase("panic-pct-zero", {"panic_window_pct": 0}, "panic_window_pct"),
    InvalidCase("panic-pct-over-100", {"panic_window_pct": 101}, "panic_window_pct"),
    InvalidCase("panic-threshold-below-1", {"panic_threshold": 0.5}, "panic_threshold"),
    InvalidCase("up-rate-1", {"max_scale_up_rate": 1.0}, "max_scale_up_rate"),
    InvalidCase("down-rate-1", {"max_scale_down_rate": 1.0}, "max_scale_down_rate"),
    InvalidCase("negative-delay", {"scale_down_delay_s": -1}, "scale_down_delay_s"),
    InvalidCase("negative-grace", {"scale_to_zero_grace_s": -0.1}, "scale_to_zero_grace_s"),
    InvalidCase("negative-min", {"min_provisioned_concurrency": -1}, "min_provisioned_concurrency"),
    InvalidCase("max-zero", {"max_provisioned_concurrency": 0}, "max_provisioned_concurrency"),
    InvalidCase("min-over-max", {"min_provisioned_concurrency": 8, "max_provisioned_concurrency": 4},
                "min_provisioned_concurrency"),
    InvalidCase("min-over-size-default", {"min_provisioned_concurrency": 5}, "min_provisioned_concurrency"),
    InvalidCase("negative-queue", {"max_queue": -1}, "max_queue"),
    InvalidCase("queue-timeout-zero", {"queue_timeout_s": 0}, "queue_timeout_s"),
    InvalidCase("unknown-size", {"workload_size": "Huge"}, "workload_size"),
]


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda case: case.id)
def test_invalid_settings_name_the_field(case: InvalidCase) -> None:
    with pytest.raises(InvalidParameterValue) as raised:
        AutoscalingSpec(**case.settings)
    assert raised.value.message.startswith(case.field)
    assert raised.value.status_code == 400


def test_spec_is_frozen() -> None:
    spec = AutoscalingSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.container_concurrency = 8  # type: ignore[misc]


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"model_uri": " "}, "model_uri"),
        ({"served_name": ""}, "served_name"),
        ({"environment_vars": {"A=B": "x"}}, "environment_vars"),
        ({"environment_vars": {"": "x"}}, "environment_vars"),
        ({"environment_vars": {"A": 1}}, "environment_vars"),
        ({"start_timeout_s": 0}, "start_timeout_s"),
        ({"drain_timeout_s": -1}, "drain_timeout_s"),
        ({"optimization": "fast"}, "optimization"),
        ({"optimization": "AUTO"}, "optimization"),
    ],
    ids=["blank-uri", "blank-name", "env-key-with-equals", "env-empty-key", "env-non-string", "start-timeout",
         "drain-timeout", "unknown-optimization", "optimization-not-normalised"],
)
def test_invalid_entity_spec(settings: dict[str, Any], field: str) -> None:
    arguments: dict[str, Any] = {"model_uri": "file:///models/a", "served_name": "a", **settings}
    with pytest.raises(InvalidParameterValue, match=f"^{field}"):
        EntitySpec(**arguments)


def test_invalid_batching() -> None:
    with pytest.raises(InvalidParameterValue, match=r"^max_batch_size"):
        BatchingSpec(max_batch_size=0)
    with pytest.raises(InvalidParameterValue, match=r"^max_batch_delay_ms"):
        BatchingSpec(max_batch_delay_ms=-1)


def test_environment_is_a_read_only_copy() -> None:
    env = {"A": "1"}
    spec = EntitySpec("file:///m", "m", environment_vars=env)
    env["A"] = "2"
    assert spec.environment_vars["A"] == "1"
    with pytest.raises(TypeError):
        spec.environment_vars["B"] = "3"  # type: ignore[index]


def test_replica_template_ignores_scaling_only() -> None:
    base = EntitySpec("file:///m", "m", environment_vars={"A": "1"})
    rescaled = dataclasses.replace(base, autoscaling=AutoscalingSpec(max_provisioned_concurrency=64))
    assert base.same_replica_template(rescaled)
    assert not base.same_replica_template(dataclasses.replace(base, model_uri="file:///other"))
    assert not base.same_replica_template(dataclasses.replace(base, environment_vars={"A": "2"}))
    assert not base.same_replica_template(dataclasses.replace(base, batching=BatchingSpec(max_batch_size=8)))
    assert base.optimization == "auto"
    assert not base.same_replica_template(dataclasses.replace(base, optimization="off"))
    assert not base.same_replica_template(
        dataclasses.replace(base, autoscaling=AutoscalingSpec(container_concurrency=8)))


@pytest.mark.parametrize(("prewarm", "message"), [
    ([{"start": "8:30", "end": "10:00", "min_replicas": 1}], "prewarm.start must be a UTC time of day as "),
    ([{"start": "08:30", "end": "24:00", "min_replicas": 1}], "prewarm.end must be a UTC time of day"),
    ([{"start": "08:30", "end": "08:30", "min_replicas": 1}], "start and end must differ"),
    ([{"start": "08:30", "end": "10:00", "min_replicas": 0}], "prewarm.min_replicas must be an integer >= 1"),
    ([{"start": "08:30", "end": "10:00", "min_replicas": 2}], "must be <= the ceiling of 1 replicas"),
    ([{"start": "08:30", "end": "10:00"}], "prewarm entries need min_replicas"),
    ([{"start": "08:30", "end": "10:00", "min_replicas": 1, "tz": "CET"}], "prewarm entries must be objects"),
    (["08:30-10:00"], "prewarm entries must be objects"),
], ids=["short-hour", "hour-24", "empty-window", "zero-replicas", "over-ceiling", "missing-field",
        "unknown-field", "not-an-object"])
def test_prewarm_windows_are_checked(prewarm: list[object], message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        AutoscalingSpec(prewarm=prewarm)  # type: ignore[arg-type]  # as the API hands them over


def test_prewarm_windows_from_the_api_become_values() -> None:
    spec = AutoscalingSpec(max_provisioned_concurrency=40,
                           prewarm=[{"start": "08:30", "end": "10:00", "min_replicas": 3}])  # type: ignore[arg-type]
    assert spec.prewarm == (PrewarmWindow("08:30", "10:00", 3),)
    same = AutoscalingSpec(max_provisioned_concurrency=40, prewarm=(PrewarmWindow("08:30", "10:00", 3),))
    assert spec == same


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf])
def test_backlog_drain_time_must_be_positive_and_finite(value: float) -> None:
    with pytest.raises(InvalidParameterValue, match="backlog_drain_s"):
        AutoscalingSpec(backlog_drain_s=value)
