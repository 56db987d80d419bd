"""Automatic optimization through the whole platform: the ``optimization`` extension on a served entity
reaches real replica processes (started by the gateway's local backend), and each entity's state says
which path its replicas run and why.

A real ``zeroserve serve`` process on loopback, models on local disk (``file://``), plain HTTP clients:
the stock databricks-sdk drops fields it does not know, and ``optimization`` is a zeroserve extension.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.router.gateway_process import GatewayProcess, wait_for

pytestmark = pytest.mark.slow

API = "/api/2.0/serving-endpoints"


@dataclass(frozen=True)
class Models:
    sklearn: str  # an MLflow sklearn LogisticRegression: converts to ONNX and verifies
    custom: str  # a custom pyfunc taking inference params: cannot be served as ONNX


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    from runtime.examples import make_custom_pyfunc, make_logreg_mlflow_sklearn

    root = tmp_path_factory.mktemp("optimization-models")
    return Models(make_logreg_mlflow_sklearn(root / "logreg").as_uri(),
                  make_custom_pyfunc(root / "custom").as_uri())


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path_factory.mktemp("optimization") / "home")
    try:
        yield process.start()
    finally:
        process.stop()


def create(client: httpx.Client, name: str, uri: str, **fields: Any) -> None:
    entity = {"entity_name": uri, "name": "model", "scale_to_zero_enabled": False, **fields}
    response = client.post(API, json={"name": name, "config": {"served_entities": [entity]}})
    assert response.status_code == 200, response.text


def settled(client: httpx.Client, name: str) -> dict[str, Any] | None:
    body: dict[str, Any] = client.get(f"{API}/{name}").json()
    return None if body["state"]["config_update"] == "IN_PROGRESS" else body


def test_served_entities_report_their_path_and_answer_alike(gateway: GatewayProcess, models: Models) -> None:
    from runtime.examples import feature_names, logreg_rows

    with gateway.client(timeout=60) as client:
        create(client, "optimized", models.sklearn)  # optimization left out: "auto"
        create(client, "native", models.sklearn, optimization="off")
        bodies = {name: wait_for(lambda name=name: settled(client, name), 90, f"{name} to settle")
                  for name in ("optimized", "native")}
        states = {}
        for name, body in bodies.items():
            assert body["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}, body["state"]
            (served,) = body["config"]["served_entities"]
            states[name] = served["state"]["optimization"]
            assert served["optimization"] == ("auto" if name == "optimized" else "off")
        assert states["optimized"]["path"] == "onnx" and states["optimized"]["mode"] == "auto"
        assert "verified on" in states["optimized"]["reason"]
        assert states["native"] == {"path": "native", "mode": "off", "reason": "optimization is off"}

        data = logreg_rows(20, 200, seed=7).tolist()
        rows = {"dataframe_split": {"columns": feature_names(20), "data": data}}
        answers = {}
        for name in ("optimized", "native"):
            response = client.post(f"/serving-endpoints/{name}/invocations", json=rows)
            assert response.status_code == 200, response.text
            answers[name] = response.json()
        assert answers["optimized"] == answers["native"]
        assert len(answers["native"]["predictions"]) == 200
        assert set(answers["native"]["predictions"]) == {0, 1}
        for name in ("optimized", "native"):
            client.delete(f"{API}/{name}").raise_for_status()


def test_required_on_a_model_that_does_not_convert_fails_the_deployment(
    gateway: GatewayProcess, models: Models
) -> None:
    with gateway.client(timeout=60) as client:
        create(client, "strict", models.custom, optimization="REQUIRED")
        body = wait_for(lambda: settled(client, "strict"), 90, "the deployment to fail")
        assert body["state"]["config_update"] == "UPDATE_FAILED"
        (served,) = body["config"]["served_entities"]
        assert served["optimization"] == "required"
        assert served["state"]["deployment"] == "DEPLOYMENT_FAILED"
        message = served["state"]["deployment_state_message"]
        # The replica's own words: what was required and why the model cannot be converted.
        assert "optimization is required but the model cannot be served as ONNX" in message
        assert "inference params" in message
        assert "optimization is required" in body["state"]["config_update_message"]
        # No replica ever served it, so no serving path is claimed.
        assert "optimization" not in served["state"]
        answer = client.post("/serving-endpoints/strict/invocations",
                             json={"dataframe_records": [{"x": 1.0, "y": 2.0}]})
        assert answer.status_code == 503 and "optimization is required" in answer.text
        client.delete(f"{API}/strict").raise_for_status()


def test_an_invalid_mode_is_a_400_naming_the_field(gateway: GatewayProcess, models: Models) -> None:
    with gateway.client(timeout=30) as client:
        entity = {"entity_name": models.sklearn, "optimization": "fastest"}
        response = client.post(API, json={"name": "invalid", "config": {"served_entities": [entity]}})
        assert response.status_code == 400
        assert response.json() == {
            "error_code": "INVALID_PARAMETER_VALUE",
            "message": "config.served_entities[0].optimization: must be one of auto, off, required, "
            "got 'fastest'",
        }
        assert client.get(f"{API}/invalid").status_code == 404
