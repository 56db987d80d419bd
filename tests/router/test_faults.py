"""The reliability suite's short form: each fault of ``benchmarks/reliability_report.py`` staged against a
real gateway process for a few seconds of load, with the report's own accounting (ok, clear error,
lost) and checks. The long form (``python -m benchmarks.reliability_report``) prints the table the
README quotes."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import reliability_report as report

pytestmark = pytest.mark.slow
SHORT_S = 3.0


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault-models")  # the models are made once, the gateways per fault


def staged(fault: str, models: Path) -> report.Row:
    row = report.FAULTS[fault](models, SHORT_S)
    print(report.table([row]))  # shown with -s, and in the failure report
    return row


def test_a_replica_killed_under_load_loses_nothing_and_the_floor_comes_back(models: Path) -> None:
    row = staged("replica-sigkill", models)
    assert row.lost == 0 and row.ok > 0 and all(row.checks.values()), row


def test_a_model_that_crashes_on_one_input_takes_down_only_its_replica(models: Path) -> None:
    row = staged("crash-on-input", models)
    assert row.lost == 0 and all(row.checks.values()), row
    assert "closed the connection while serving the request" in row.outcome


def test_a_killed_gateway_restarts_with_its_endpoints_tokens_and_floors_and_no_orphans(models: Path) -> None:
    row = staged("gateway-restart", models)
    # What was in flight inside the killed process, or written to its connections as it died, cannot be
    # answered (a few per client thread: the report's load runs two); everything else is.
    assert row.lost <= 8 and all(row.checks.values()), row


def test_with_the_store_down_a_cached_model_cold_starts_and_an_uncached_one_fails_saying_why(
    models: Path,
) -> None:
    row = staged("store-down", models)
    assert row.lost == 0 and all(row.checks.values()), row


def test_a_model_that_hangs_on_load_fails_its_deployment_and_leaves_no_replica(models: Path) -> None:
    row = staged("hang-on-load", models)
    assert row.lost == 0 and all(row.checks.values()), row


def test_a_leaking_model_is_killed_at_its_limit_and_its_neighbours_are_untouched(models: Path) -> None:
    row = staged("memory-leak", models)
    assert row.lost == 0 and all(row.checks.values()), row


def test_a_flaky_store_at_cold_start_is_absorbed_and_a_failing_one_named(models: Path) -> None:
    row = staged("store-flaky", models)
    assert row.lost == 0 and row.ok == 4 and row.clear == 1 and all(row.checks.values()), row
