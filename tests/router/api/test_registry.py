"""Registered models are checked at create and update, against a real MLflow registry (sqlite store)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.api import registry
from tests.router.api.conftest import API, Harness


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry holding model 'churn' version 1 (creating the database runs MLflow's migrations)."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    model = root / "model"
    model.mkdir()
    (model / "MLmodel").write_text("flavors: {}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's own deprecation chatter is not under test
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.create_registered_model("churn")
        client.create_model_version("churn", model.as_uri(), run_id=None)
    yield uri


def served(name: str, version: str) -> dict[str, object]:
    return {"name": "config-0", "config": {"served_entities": [{
        "entity_name": name, "entity_version": version, "workload_size": "Small",
        "scale_to_zero_enabled": True}]}}


async def test_a_missing_model_or_version_is_refused_at_create(
    harness: Harness, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        created = await harness.client.post(API, json={**served("churn", "1"), "name": "churn-ok"})
        assert created.status_code == 200, created.text
        for name, version in (("churn", "7"), ("no-such-model", "1")):
            refused = await harness.client.post(API, json={**served(name, version), "name": "churn-bad"})
            assert refused.status_code == 404, refused.text
            assert refused.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
            assert f"registered model {name!r} has no version {version!r}" in refused.json()["message"]
        update = await harness.client.put(f"{API}/churn-ok/config", json={"served_entities": [{
            "entity_name": "churn", "entity_version": "2", "workload_size": "Small",
            "scale_to_zero_enabled": True}]})
        assert update.status_code == 404 and "has no version '2'" in update.text
    assert (await harness.client.get(f"{API}/churn-bad")).status_code == 404  # nothing was stored


async def test_a_registry_that_does_not_answer_is_a_503(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Nothing listens there; MLflow's client would retry for minutes: the check gives up in time.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setattr(registry, "REGISTRY_TIMEOUT_S", 1.0)
    refused = await harness.client.post(API, json=served("churn", "1"))
    assert refused.status_code == 503, refused.text
    assert "MLflow registry at http://127.0.0.1:9" in refused.json()["message"]
