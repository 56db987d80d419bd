"""The CLI against a real gateway process: human and JSON output, exit codes, declarative apply."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from router.cli import apply, cli, cost, endpoints, serve  # noqa: F401  (registers the commands)
from tests.router.gateway_process import ADMIN_TOKEN, GatewayProcess

pytestmark = pytest.mark.slow

ROW = {"age": 41, "tenure_months": 20, "num_purchases": 6, "avg_basket": 37.5, "days_since_last_visit": 12,
       "is_member": True}


@pytest.fixture(scope="module")
def model_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    from runtime.examples import make_propensity_mlflow

    return make_propensity_mlflow(tmp_path_factory.mktemp("models") / "propensity").as_uri()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path_factory.mktemp("cli") / "home")
    try:
        yield process.start()
    finally:
        process.stop()


def run(gateway: GatewayProcess, *args: str, token: str = ADMIN_TOKEN) -> Result:
    env = {"ZEROSERVE_URL": gateway.url, "ZEROSERVE_TOKEN": token, "COLUMNS": "200"}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_endpoints_create_get_update_delete(gateway: GatewayProcess, model_uri: str) -> None:
    created = run(gateway, "endpoints", "create", "cli-ep", "--model", model_uri, "--version", "1",
                  "--scale-to-zero", "--tag", "team=ds", "--optimization", "OFF")
    assert created.exit_code == 0, created.output
    assert "cli-ep" in created.stdout and "READY" in created.stdout
    # Scaled to zero from the start: no replica has said how it serves yet, so the requested mode shows.
    assert "- (optimization off)" in created.stdout

    got = as_json(run(gateway, "endpoints", "get", "cli-ep", "-o", "json"))
    assert got["config"]["served_entities"][0]["name"] == "propensity-1"
    assert got["config"]["served_entities"][0]["optimization"] == "off"
    assert "optimization" not in got["config"]["served_entities"][0]["state"]
    assert got["tags"] == [{"key": "team", "value": "ds"}]
    listed = as_json(run(gateway, "endpoints", "list", "--output", "json"))
    assert [e["name"] for e in listed] == ["cli-ep"]

    config = {"served_entities": [{"entity_name": model_uri, "entity_version": "2", "name": "v2",
                                   "scale_to_zero_enabled": True}]}
    updated = as_json(run(gateway, "endpoints", "update", "cli-ep", "--json", json.dumps(config),
                          "-o", "json"))
    assert updated["config"]["config_version"] == 2
    assert updated["state"]["config_update"] == "NOT_UPDATING"

    assert run(gateway, "endpoints", "delete", "cli-ep").exit_code == 0
    missing = run(gateway, "endpoints", "get", "cli-ep")
    assert missing.exit_code == 1
    assert "RESOURCE_DOES_NOT_EXIST" in missing.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["endpoints", "create", "x"], "give --model"),
        (["endpoints", "create", "bad name", "--model", "file:///m"], "INVALID_PARAMETER_VALUE"),
        (["endpoints", "create", "x", "--model", "file:///m", "--env", "NOEQUALS"], "is not KEY=VALUE"),
        (["invoke", "nope", "--json", "{}"], "RESOURCE_DOES_NOT_EXIST"),
        (["invoke", "nope", "--json", "{not json"], "is not valid JSON"),
        (["apply", "-f", "/does/not/exist.yaml"], "cannot read"),
    ],
    ids=["no-model", "bad-name", "bad-env", "invoke-missing", "bad-json", "apply-missing-file"],
)
def test_errors_are_one_clear_line_and_exit_nonzero(
    gateway: GatewayProcess, args: list[str], message: str
) -> None:
    result = run(gateway, *args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_update_changes_a_setting_without_repeating_the_model(
    gateway: GatewayProcess, model_uri: str
) -> None:
    created = run(gateway, "endpoints", "create", "upd-ep", "--model", model_uri, "--version", "1",
                  "--no-scale-to-zero", "--concurrency", "8")
    assert created.exit_code == 0, created.output
    updated = as_json(run(gateway, "endpoints", "update", "upd-ep", "--scale-to-zero", "--no-wait",
                          "-o", "json"))
    entity = (updated.get("pending_config") or updated["config"])["served_entities"][0]
    assert entity["scale_to_zero_enabled"] is True
    assert entity["entity_name"] == model_uri and entity["entity_version"] == "1"
    assert entity["autoscaling"]["container_concurrency"] == 8  # the other settings are kept
    nothing = run(gateway, "endpoints", "update", "upd-ep")
    assert nothing.exit_code == 2 and "nothing to change" in nothing.output
    other = run(gateway, "endpoints", "update", "upd-ep", "--served-name", "nope", "--scale-to-zero")
    assert other.exit_code == 2 and "has no served entity nope" in other.output
    assert run(gateway, "endpoints", "delete", "upd-ep").exit_code == 0


def test_bad_token_and_unreachable_gateway(gateway: GatewayProcess) -> None:
    denied = run(gateway, "endpoints", "list", token="zs_0000000000000000_wrong")
    assert denied.exit_code == 1 and "UNAUTHENTICATED" in denied.output
    assert "the token was not accepted (wrong, revoked or expired): check ZEROSERVE_TOKEN" in denied.output
    # No token at all: the CLI says what to set, not which HTTP header to send.
    anonymous = run(gateway, "endpoints", "list", token="")
    assert anonymous.exit_code == 1
    assert "no token given: set ZEROSERVE_TOKEN or pass --token" in anonymous.output
    env = {"ZEROSERVE_URL": "http://127.0.0.1:9", "ZEROSERVE_TOKEN": ADMIN_TOKEN}
    unreachable = CliRunner().invoke(cli, ["status"], env=env)
    assert unreachable.exit_code == 1 and "cannot reach the gateway" in unreachable.output


def test_apply_is_declarative_and_idempotent(gateway: GatewayProcess, model_uri: str, tmp_path: Path) -> None:
    spec = tmp_path / "endpoints.yaml"
    spec.write_text(f"""
endpoints:
  - name: applied
    tags: {{owner: growth}}
    config:
      served_entities:
        - {{entity_name: "{model_uri}", entity_version: "1", name: v1, scale_to_zero_enabled: true}}
""")
    first = as_json(run(gateway, "apply", "-f", str(spec), "-o", "json"))
    assert first == [{"name": "applied", "action": "create", "changed": [], "dry_run": False}]
    second = as_json(run(gateway, "apply", "-f", str(spec), "-o", "json"))
    assert second[0]["action"] == "unchanged"

    spec.write_text(spec.read_text().replace("owner: growth", "owner: risk").replace(
        "scale_to_zero_enabled: true}", "scale_to_zero_enabled: true, autoscaling: {max_queue: 10}}"))
    dry = run(gateway, "apply", "-f", str(spec), "--dry-run")
    assert "applied: would be updated (config, tags)" in dry.stdout
    assert as_json(run(gateway, "endpoints", "get", "applied", "-o", "json"))["config"]["config_version"] == 1
    third = as_json(run(gateway, "apply", "-f", str(spec), "-o", "json"))
    assert third[0] == {
        "name": "applied", "action": "update", "changed": ["config", "tags"], "dry_run": False
    }
    endpoint = as_json(run(gateway, "endpoints", "get", "applied", "-o", "json"))
    assert endpoint["config"]["config_version"] == 2
    assert endpoint["config"]["served_entities"][0]["autoscaling"]["max_queue"] == 10
    assert endpoint["tags"] == [{"key": "owner", "value": "risk"}]
    assert as_json(run(gateway, "apply", "-f", str(spec), "-o", "json"))[0]["action"] == "unchanged"
    run(gateway, "endpoints", "delete", "applied")


def test_invoke_status_and_logs(gateway: GatewayProcess, model_uri: str) -> None:
    created = run(gateway, "endpoints", "create", "query-me", "--model", model_uri, "--served-name", "m")
    assert created.exit_code == 0, created.output
    answer = as_json(run(gateway, "invoke", "query-me", "--json", json.dumps({"dataframe_records": [ROW]}),
                         "-o", "json"))
    assert 0.0 <= answer["predictions"][0]["probability"] <= 1.0
    text = run(gateway, "invoke", "query-me", "--json", json.dumps({"dataframe_records": [ROW]}))
    assert "served by m" in text.stderr

    status = run(gateway, "status")
    assert status.exit_code == 0 and "query-me" in status.stdout and "1 ready / 1 desired" in status.stdout
    assert "native" in status.stdout  # a custom pyfunc has nothing to convert
    got = as_json(run(gateway, "endpoints", "get", "query-me", "-o", "json"))
    assert got["config"]["served_entities"][0]["state"]["optimization"] == {
        "path": "native", "mode": "auto",
        "reason": "no convertible flavor (pyfunc loader 'mlflow.pyfunc.model', flavors ['python_function'])",
    }
    assert as_json(run(gateway, "status", "-o", "json"))[0]["name"] == "query-me"
    logs = as_json(run(gateway, "logs", "query-me", "-o", "json"))
    assert "ZEROSERVE_REPLICA_READY" in logs["m"]
    build = run(gateway, "logs", "query-me", "m", "--build")
    assert "served entity m: model" in build.stdout
    run(gateway, "endpoints", "delete", "query-me")


def test_endpoints_cost_replays_a_trace_against_the_settings(
    gateway: GatewayProcess, model_uri: str, tmp_path: Path
) -> None:
    config = {"served_entities": [{
        "entity_name": model_uri, "entity_version": "1", "name": "scored", "scale_to_zero_enabled": True,
        "max_provisioned_concurrency": 40,
        "autoscaling": {"backlog_drain_s": 2,
                        "prewarm": [{"start": "08:30", "end": "10:00", "min_replicas": 2}]},
    }]}
    created = run(gateway, "endpoints", "create", "cost-ep", "--json", json.dumps(config), "--no-wait")
    assert created.exit_code == 0, created.output
    got = as_json(run(gateway, "endpoints", "get", "cost-ep", "-o", "json"))
    entity = got["config"]["served_entities"][0]
    assert entity["autoscaling"]["backlog_drain_s"] == 2
    assert entity["autoscaling"]["prewarm"] == [{"start": "08:30", "end": "10:00", "min_replicas": 2}]

    # Two minutes of traffic: 20 req/s of 50 ms, then a burst of 100 req/s for 20 s.
    trace = tmp_path / "trace.csv"
    lines = ["timestamp_ms,latency_ms,served_entity"]
    start_ms = 1_750_000_000_000
    for step in range(120 * 20):
        at_ms = start_ms + step * 50
        lines.append(f"{at_ms},50,scored")
        if 60_000 <= step * 50 < 80_000:
            lines += [f"{at_ms + offset},50,scored" for offset in (10, 20, 30, 40)]
    lines.append(f"{start_ms},50,another-entity")
    trace.write_text("\n".join(lines) + "\n")

    report = as_json(run(gateway, "endpoints", "cost", "cost-ep", "--trace", str(trace), "-o", "json"))
    assert report["served_entity"] == "scored"
    assert report["requests"] == 120 * 20 + 20 * 20 * 4  # the other entity's request is not counted
    options = {row["option"]: row for row in report["options"]}
    assert next(iter(options)) == "as configured"
    assert {"target utilization 0.5", "target utilization 0.9", "scale to zero off"} <= set(options)
    configured = options["as configured"]
    assert 1 <= configured["replica_starts"] <= configured["peak_replicas"] + 2
    # 100 req/s x 50 ms = 5 concurrent at the peak: 2 replicas at 2.8 each, 4 at most while it drains.
    assert 2 <= configured["peak_replicas"] <= 4
    assert configured["cost"] == pytest.approx(
        configured["replica_seconds"] / 3600 * report["price_per_replica_hour"], abs=1e-4)
    assert options["target utilization 0.5"]["replica_seconds"] > options["target utilization 0.9"][
        "replica_seconds"]

    # An inference table as the gateway writes it: a folder of date-partitioned Parquet files.
    import csv

    import pyarrow as pa
    import pyarrow.parquet as parquet

    with trace.open() as handle:
        table_rows = list(csv.DictReader(handle))
    table = tmp_path / "inference" / "cost-ep"
    for day, half in (("2025-06-15", table_rows[: len(table_rows) // 2]),
                      ("2025-06-16", table_rows[len(table_rows) // 2:])):
        (table / f"date={day}").mkdir(parents=True)
        parquet.write_table(pa.table({
            "timestamp_ms": [int(row["timestamp_ms"]) for row in half],
            "latency_ms": [float(row["latency_ms"]) for row in half],
            "served_entity": [row["served_entity"] for row in half],
        }), table / f"date={day}" / "part-0.parquet")
    from_table = as_json(run(gateway, "endpoints", "cost", "cost-ep", "--trace", str(table), "-o", "json"))
    assert from_table["requests"] == report["requests"]
    assert from_table["options"][0] == report["options"][0]

    text = run(gateway, "endpoints", "cost", "cost-ep", "--trace", str(trace))
    assert text.exit_code == 0, text.output
    assert "as configured" in text.stdout and "p99 queue ms" in text.stdout

    no_latency = tmp_path / "trace.jsonl"
    no_latency.write_text('{"timestamp": 1750000000.0}\n{"timestamp": 1750000000.5}\n')
    refused = run(gateway, "endpoints", "cost", "cost-ep", "--trace", str(no_latency))
    assert refused.exit_code == 2
    assert "no latency_ms: give --service-ms" in refused.output
    given = as_json(run(gateway, "endpoints", "cost", "cost-ep", "--trace", str(no_latency),
                        "--service-ms", "20", "-o", "json"))
    assert given["requests"] == 2

    early = [{"start": "8:30", "end": "10:00", "min_replicas": 1}]
    bad = {"served_entities": [{**config["served_entities"][0], "autoscaling": {"prewarm": early}}]}
    rejected = run(gateway, "endpoints", "update", "cost-ep", "--json", json.dumps(bad))
    assert rejected.exit_code == 1
    assert "prewarm.start must be a UTC time of day as HH:MM" in rejected.output
    assert run(gateway, "endpoints", "delete", "cost-ep").exit_code == 0
