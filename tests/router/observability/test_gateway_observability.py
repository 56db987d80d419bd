"""Observability end to end: a real `zeroserve serve` process, a real ONNX replica, real traffic, then
everything read back the way an operator would — Prometheus text, the endpoint's cost fields, the
dashboard's JSON, the inference table's Parquet files, the JSON log lines, and the saved cost."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.examples import logreg_rows, make_logreg_onnx
from tests.router.gateway_process import ADMIN_TOKEN, GatewayProcess, s3_models, wait_for

pytestmark = pytest.mark.slow

N_FEATURES = 20
SENT = 30


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


BUCKET = "observability-models"


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """moto on loopback holding the ONNX model, so that the replica fetches it into the cache."""
    model = make_logreg_onnx(tmp_path_factory.mktemp("models") / "fraud", n_features=N_FEATURES)
    with s3_models(BUCKET, {"fraud/1": model}) as env:
        yield f"s3://{BUCKET}/fraud/1", env


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            model_store: tuple[str, dict[str, str]]) -> Iterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("home")
    env = {
        **model_store[1],
        "ZEROSERVE_OBSERVABILITY_RESOLUTION_S": "1",
        "ZEROSERVE_INFERENCE_TABLES_FLUSH_INTERVAL_S": "0.5",
        "ZEROSERVE_COST_PRICES_PER_REPLICA_HOUR": '{"CPU": 36.0}',  # 0.01 per replica-second
    }
    with GatewayProcess(home, env) as running:
        yield running


@pytest.fixture(scope="module")
def traffic(gateway: GatewayProcess, model_store: tuple[str, dict[str, str]]) -> dict[str, Any]:
    body = {"name": "fraud", "config": {
        "served_entities": [{"name": "fraud-1", "entity_name": model_store[0], "workload_size": "Small",
                             "scale_to_zero_enabled": True}],
        "auto_capture_config": {"enabled": True, "catalog_name": "ml", "schema_name": "serving",
                                "table_name_prefix": "fraud"},
    }}
    with gateway.client(timeout=60) as client:
        assert client.post("/api/2.0/serving-endpoints", json=body).status_code == 200
        wait_for(lambda: client.get("/api/2.0/serving-endpoints/fraud").json()["state"]["ready"] == "READY",
                 60, "endpoint READY")
        answers = []
        for index in range(SENT):
            payload = {"inputs": logreg_rows(N_FEATURES, 1, seed=index).tolist(),
                       "client_request_id": f"client-{index}", "usage_context": {"team": "risk"}}
            headers = {"x-request-id": f"trace-{index}"} if index % 2 else {}
            answers.append(client.post("/serving-endpoints/fraud/invocations", json=payload, headers=headers))
        bad = [client.post("/serving-endpoints/fraud/invocations", json={"inputs": [[1.0, 2.0]]})
               for _ in range(2)]
    return {"answers": answers, "bad": bad}


def test_responses_carry_request_ids(traffic: dict[str, Any]) -> None:
    answers: list[httpx.Response] = traffic["answers"]
    assert [answer.status_code for answer in answers] == [200] * SENT
    assert [b.status_code for b in traffic["bad"]] == [400, 400]
    for index, answer in enumerate(answers):
        request_id = answer.headers["x-request-id"]
        assert request_id == f"trace-{index}" if index % 2 else len(request_id) == 32
        assert answer.headers["served-model-name"] == "fraud-1"


def test_prometheus_metrics_after_known_traffic(gateway: GatewayProcess, traffic: dict[str, Any]) -> None:
    with gateway.client() as client:
        found = samples(client.get("/metrics").text)
        one = samples(client.get("/api/2.0/serving-endpoints/fraud/metrics").text)
    labels = frozenset({"endpoint": "fraud", "served_entity": "fraud-1"}.items())

    def value(name: str, **extra: str) -> float:
        return found[(name, labels | frozenset(extra.items()))]

    assert value("zeroserve_requests_total", status_class="2xx") == SENT
    assert value("zeroserve_requests_total", status_class="4xx") == 2
    assert value("zeroserve_request_duration_seconds_count") == SENT + 2
    assert value("zeroserve_upstream_duration_seconds_count") == SENT + 2
    assert value("zeroserve_queue_wait_seconds_count") == SENT + 2
    assert value("zeroserve_cold_starts_total") == 1
    assert 0 < value("zeroserve_cold_start_duration_seconds_sum") < 60
    assert value("zeroserve_replicas", state="ready") == 1
    assert value("zeroserve_scaling_decisions_total", direction="up") >= 1
    assert value("zeroserve_replica_seconds_total", workload_type="CPU") > 0
    assert value("zeroserve_cost_total", workload_type="CPU") > 0
    assert found[("zeroserve_inference_table_records_total",
                  frozenset({"endpoint": "fraud", "outcome": "captured"}.items()))] == SENT + 2
    assert one[("zeroserve_requests_total", labels | {("status_class", "2xx")})] == SENT
    # The replica fetched the model into the (fresh) cache: one miss, its bytes, announced when ready.
    assert found[("zeroserve_model_cache_misses_total", frozenset())] == 1
    assert found[("zeroserve_model_cache_fetched_bytes_total", frozenset())] > 0


def test_cost_fields_on_the_endpoint(gateway: GatewayProcess, traffic: dict[str, Any]) -> None:
    with gateway.client() as client:
        endpoint = client.get("/api/2.0/serving-endpoints/fraud").json()
    cost = endpoint["cost"]
    assert cost["currency"] == "USD" and cost["inferences"] == SENT
    assert cost["replica_seconds"] > 0
    assert cost["total"] == pytest.approx(cost["replica_seconds"] / 100, rel=0.01)  # 0.01 per replica-second
    assert cost["per_1k_inferences"] == pytest.approx(cost["total"] / SENT * 1000, rel=0.01)
    assert cost["hourly_rate"] == pytest.approx(36.0)
    entity_cost = endpoint["config"]["served_entities"][0]["state"]["cost"]
    assert entity_cost["inferences"] == SENT


def test_dashboard_json(gateway: GatewayProcess, traffic: dict[str, Any]) -> None:
    with gateway.client() as client:
        assert httpx.get(f"{gateway.url}/dashboard").status_code == 200  # the page needs no token
        assert httpx.get(f"{gateway.url}/api/2.0/zeroserve/overview").status_code == 401
        overview = client.get("/api/2.0/zeroserve/overview").json()
        series = wait_for(lambda: (s := client.get("/api/2.0/zeroserve/timeseries/fraud").json())
                          and any(s["series"]["requests_per_s"]) and s, 10, "a point with traffic")
    (fraud,) = overview["endpoints"]
    assert fraud["name"] == "fraud" and fraud["replicas"]["ready"] == 1 and fraud["capture"] is True
    assert sum(v for v in series["series"]["cold_starts"] if v) == 1
    assert any(event["desired"] == 1 for event in series["scaling_events"])


def test_inference_table_matches_the_requests(gateway: GatewayProcess, traffic: dict[str, Any]) -> None:
    table = gateway.home / "inference_tables" / "ml.serving.fraud_payload"

    def rows() -> list[dict[str, Any]]:
        found = [row for path in table.rglob("*.parquet") for row in pq.read_table(path).to_pylist()]
        return found if len(found) >= SENT + 2 else []

    captured = wait_for(rows, 15, "the inference table")
    by_client = {row["client_request_id"]: row for row in captured if row["client_request_id"]}
    for index, answer in enumerate(traffic["answers"]):
        row = by_client[f"client-{index}"]
        assert row["request_id"] == answer.headers["x-request-id"]
        assert row["status_code"] == 200 and row["served_entity_name"] == "fraud-1"
        assert orjson.loads(row["response"]) == answer.json()
        assert dict(row["usage_context"]) == {"team": "risk"}
        assert row["latency_ms"] > 0 and row["timestamp_ms"] > 1_700_000_000_000
    assert sorted(row["status_code"] for row in captured if not row["client_request_id"]) == [400, 400]


def test_json_logs_carry_request_ids(gateway: GatewayProcess, traffic: dict[str, Any]) -> None:
    def traced(access: list[dict[str, Any]]) -> bool:
        return any(entry["request_id"] == "trace-1" and entry["status"] == 200
                   and entry["path"] == "/serving-endpoints/fraud/invocations" for entry in access)

    assert traced(gateway.access_log(until=traced))


def test_cli_status_shows_cost(gateway: GatewayProcess, traffic: dict[str, Any]) -> None:
    from click.testing import CliRunner

    from router.cli import cli, serve  # noqa: F401  (registers the commands)

    env = {"ZEROSERVE_URL": gateway.url, "ZEROSERVE_TOKEN": ADMIN_TOKEN, "COLUMNS": "250"}
    result = CliRunner().invoke(cli, ["status"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "cost so far" in result.stdout and "per 1k inferences" in result.stdout
    assert "USD (36.00/h)" in result.stdout  # one replica at 36 per hour


def test_cost_is_saved_when_the_gateway_stops(gateway: GatewayProcess, traffic: dict[str, Any]) -> None:
    gateway.stop()
    saved = json.loads((gateway.home / "observability" / "cost.json").read_text())
    assert saved["entities"]["fraud/fraud-1"]["replica_seconds"] > 0
