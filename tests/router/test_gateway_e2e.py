"""The gateway as users run it: a `zeroserve serve` process on loopback, driven by the stock
Databricks SDK, serving models kept in an S3-compatible store (moto) through real replica processes."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.examples import make_logreg_onnx
from tests.router.gateway_process import ADMIN_TOKEN, GatewayProcess, s3_models, wait_for

pytestmark = pytest.mark.slow

BUCKET = "zeroserve-e2e-models"
ROW = {"age": 41, "tenure_months": 20, "num_purchases": 6, "avg_basket": 37.5, "days_since_last_visit": 12,
       "is_member": True}


@dataclass(frozen=True)
class ModelStore:
    env: dict[str, str]
    v1: str
    v2: str


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelStore]:
    """moto on loopback holding two versions of the propensity model under s3:// URIs."""
    from runtime.examples import make_propensity_mlflow

    local = tmp_path_factory.mktemp("models")
    models = {f"propensity/{version}": make_propensity_mlflow(local / version) for version in ("1", "2")}
    with s3_models(BUCKET, models) as env:
        yield ModelStore(env, f"s3://{BUCKET}/propensity/1", f"s3://{BUCKET}/propensity/2")


@pytest.fixture
def gateway(tmp_path: Path, model_store: ModelStore) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path / "home", model_store.env)
    try:
        yield process.start()
    finally:
        process.stop()


def sdk(gateway: GatewayProcess) -> Any:
    from databricks.sdk import WorkspaceClient

    # Plain http on loopback, a personal access token, nothing else configured from the environment.
    return WorkspaceClient(host=gateway.url, token=ADMIN_TOKEN, auth_type="pat")


def served_entity(uri: str, version: str, name: str, **fields: Any) -> Any:
    from databricks.sdk.service.serving import ServedEntityInput

    return ServedEntityInput(entity_name=uri, entity_version=version, name=name, workload_size="Small",
                             scale_to_zero_enabled=False, **fields)


def test_the_databricks_sdk_creates_a_client_without_a_warning(
    gateway: GatewayProcess, caplog: pytest.LogCaptureFixture
) -> None:
    # The SDK asks /.well-known/databricks-config, without a token, on every client creation and warns
    # when that fails (401 and 404 alike): the gateway answers it publicly with nothing to add.
    with caplog.at_level(logging.DEBUG, logger="databricks.sdk"):
        client = sdk(gateway)
        assert client.config.host == gateway.url
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING], caplog.text
    assert httpx.get(f"{gateway.url}/.well-known/databricks-config", timeout=10).json() == {}


def test_databricks_sdk_lifecycle(gateway: GatewayProcess, model_store: ModelStore) -> None:
    from databricks.sdk.errors import NotFound
    from databricks.sdk.service.serving import (
        DataframeSplitInput,
        EndpointCoreConfigInput,
        Route,
        TrafficConfig,
    )

    w = sdk(gateway)
    created = w.serving_endpoints.create_and_wait(
        name="propensity",
        config=EndpointCoreConfigInput(name="propensity",
                                       served_entities=[served_entity(model_store.v1, "1", "v1")]),
    )
    assert created.state.ready.value == "READY"
    assert created.config.config_version == 1
    assert created.config.served_entities[0].state.deployment.value == "DEPLOYMENT_READY"

    got = w.serving_endpoints.get("propensity")
    assert got.id == created.id and got.config.served_entities[0].entity_name == model_store.v1
    assert [e.name for e in w.serving_endpoints.list()] == ["propensity"]

    by_records = w.serving_endpoints.query("propensity", dataframe_records=[ROW, ROW])
    assert by_records.served_model_name == "v1"
    assert len(by_records.predictions) == 2 and 0.0 <= by_records.predictions[0]["probability"] <= 1.0
    split = DataframeSplitInput(columns=list(ROW), data=[list(ROW.values())])
    by_split = w.serving_endpoints.query("propensity", dataframe_split=split)
    assert by_split.served_model_name == "v1"
    assert by_split.predictions == by_records.predictions[:1]

    updated = w.serving_endpoints.update_config_and_wait(
        "propensity",
        served_entities=[served_entity(model_store.v1, "1", "v1"), served_entity(model_store.v2, "2", "v2")],
        traffic_config=TrafficConfig(routes=[Route(served_model_name="v2", traffic_percentage=90),
                                             Route(served_model_name="v1", traffic_percentage=10)]),
    )
    assert updated.config.config_version == 2
    assert {r.served_entity_name: r.traffic_percentage for r in updated.config.traffic_config.routes} == {
        "v2": 90, "v1": 10,
    }
    query = w.serving_endpoints.query
    seen = [query("propensity", dataframe_records=[ROW]).served_model_name for _ in range(60)]
    assert set(seen) == {"v1", "v2"} and seen.count("v2") > seen.count("v1")

    build_logs = w.serving_endpoints.build_logs("propensity", "v2").logs
    assert model_store.v2 in build_logs and "ZEROSERVE_REPLICA_READY" in build_logs
    assert w.serving_endpoints.logs("propensity", "v2").logs
    metrics = httpx.get(f"{gateway.url}/api/2.0/serving-endpoints/propensity/metrics",
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
    assert 'zeroserve_requests_total{endpoint="propensity",served_entity="v2",status_class="2xx"}' in metrics

    w.serving_endpoints.delete("propensity")
    with pytest.raises(NotFound):
        w.serving_endpoints.get("propensity")
    assert list(w.serving_endpoints.list()) == []


def test_restart_after_sigkill_loses_nothing(gateway: GatewayProcess, model_store: ModelStore) -> None:
    body = {
        "name": "durable",
        "config": {"served_entities": [{"entity_name": model_store.v1, "entity_version": "1", "name": "v1"}]},
        "tags": [{"key": "team", "value": "growth"}],
    }
    with gateway.client(timeout=30) as client:
        assert client.post("/api/2.0/serving-endpoints", json=body).status_code == 200
        before = wait_for(lambda: _ready(client, "durable"), 60, "the endpoint to be ready")
    assert gateway.kill() == -9

    with gateway.start().client(timeout=30) as client:
        after = client.get("/api/2.0/serving-endpoints/durable").json()
        assert after["id"] == before["id"]
        assert after["config"]["config_version"] == 1
        assert after["tags"] == [{"key": "team", "value": "growth"}]
        assert after["creation_timestamp"] == before["creation_timestamp"]
        events = client.get("/api/2.0/serving-endpoints/durable/events").json()["events"]
        assert [e["kind"] for e in events][:2] == ["CREATED", "UPDATE_SUCCEEDED"]
        # It has a floor of one replica, so it comes back up by itself and answers.
        wait_for(lambda: _ready(client, "durable"), 60, "the endpoint to be ready again")
        answer = client.post("/serving-endpoints/durable/invocations", json={"dataframe_records": [ROW]})
        assert answer.status_code == 200 and answer.headers["served-model-name"] == "v1"


def test_config_update_under_steady_traffic_loses_no_request(
    gateway: GatewayProcess, model_store: ModelStore
) -> None:
    create = {"name": "steady", "config": {"served_entities": [
        {"entity_name": model_store.v1, "entity_version": "1", "name": "v1"}]}}
    with gateway.client(timeout=30) as client:
        client.post("/api/2.0/serving-endpoints", json=create).raise_for_status()
        wait_for(lambda: _ready(client, "steady"), 60, "the endpoint to be ready")

        results: list[tuple[int, str]] = []
        stop = threading.Event()

        def traffic() -> None:
            with gateway.client(timeout=30) as sender:
                while not stop.is_set():
                    response = sender.post("/serving-endpoints/steady/invocations",
                                           json={"dataframe_records": [ROW]})
                    results.append((response.status_code, response.headers.get("served-model-name", "")))

        senders = [threading.Thread(target=traffic) for _ in range(2)]
        for sender in senders:
            sender.start()
        try:
            time.sleep(0.5)
            v2 = {"entity_name": model_store.v2, "entity_version": "2", "name": "v2"}
            update = {"served_entities": [v2]}
            client.put("/api/2.0/serving-endpoints/steady/config", json=update).raise_for_status()
            wait_for(lambda: _ready(client, "steady", version=2), 90, "the update to finish")
            # Keep sending while the old entity drains and stops.
            time.sleep(2.0)
        finally:
            stop.set()
            for sender in senders:
                sender.join(timeout=60)
    statuses = [status for status, _ in results]
    assert len(statuses) > 20
    assert set(statuses) == {200}, f"lost requests: {[s for s in statuses if s != 200][:5]}"
    served = [name for _, name in results]
    assert served[0] == "v1" and served[-1] == "v2"
    assert "v1" not in served[served.index("v2"):][-10:]


def _ready(client: httpx.Client, name: str, version: int = 1) -> dict[str, Any] | None:
    body: dict[str, Any] = client.get(f"/api/2.0/serving-endpoints/{name}").json()
    state = body.get("state", {})
    if state.get("config_update") == "UPDATE_FAILED":
        raise AssertionError(f"{name} failed: {state}")
    config = body.get("config") or {}
    done = state.get("ready") == "READY" and state.get("config_update") == "NOT_UPDATING"
    return body if done and config.get("config_version") == version else None



def test_sigterm_shutdown_writes_out_the_last_log_lines(tmp_path: Path) -> None:
    # Log lines are written once per flush interval; the lines of an orderly shutdown, down to uvicorn's
    # very last one, must still reach the log; the shutdown was orderly, so the exit status is 0.
    process = GatewayProcess(tmp_path / "home").start()
    assert process.stop() == 0
    lines = process.log_path.read_text().splitlines()
    messages = [json.loads(line).get("message", "") for line in lines if line.startswith("{")]
    assert any(message.startswith("Finished server process") for message in messages), lines[-5:]


def test_a_gpu_workload_type_on_a_machine_without_a_gpu_is_refused_saying_so(tmp_path: Path) -> None:
    # This machine has no CUDA device (the local backend asks the driver): a GPU workload type is a
    # clear 400 at create and at update, instead of a replica that crash-loops or silently runs on the CPU.
    api = "/api/2.0/serving-endpoints"
    model = make_logreg_onnx(tmp_path / "logreg", n_features=4)
    with GatewayProcess(tmp_path / "home") as gateway, gateway.client(timeout=30) as client:
        entity = {"name": "m", "entity_name": model.as_uri(), "workload_type": "GPU_SMALL"}
        refused = client.post(api, json={"name": "vision", "config": {"served_entities": [entity]}})
        assert refused.status_code == 400, refused.text
        assert refused.json()["message"] == (
            "config.served_entities[0].workload_type GPU_SMALL needs a GPU, and this machine (no CUDA "
            "device) has none: use workload_type CPU, or a backend with GPUs")
        cpu = {**entity, "workload_type": "CPU"}
        created = client.post(api, json={"name": "vision", "config": {"served_entities": [cpu]}})
        assert created.status_code == 200, created.text
        update = client.put(f"{api}/vision/config", json={"served_entities": [entity]})
        assert update.status_code == 400 and "served_entities[0].workload_type GPU_SMALL" in update.text
        # What the gateway found is in its status and metrics.
        assert client.get("/api/2.0/zeroserve/fleet").json()["accelerators"]["gpus"] == 0
        assert "zeroserve_gpus 0.0" in client.get("/metrics").text
