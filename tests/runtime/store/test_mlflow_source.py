"""models:/ and runs:/ URIs resolved through a real MLflow tracking store, artifacts on S3 (moto)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from runtime.errors import StoreError
from runtime.store import StoreSettings, open_model
from runtime.store.testing import S3Proxy


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str) -> Iterator[dict[str, str]]:
    """One MLflow database for the module (creating one runs migrations: seconds)."""
    import boto3

    bucket = "mlflow-artifacts-store-test"
    boto3.client("s3", endpoint_url=f"http://{moto_endpoint}", region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    root = tmp_path_factory.mktemp("mlflow")
    yield {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_S3_ENDPOINT_URL": f"http://{moto_endpoint}",
        "bucket": bucket,
        "root": str(root),
    }


@pytest.fixture
def registry(
    tracking: dict[str, str], monkeypatch: pytest.MonkeyPatch, aws_env: None
) -> Iterator[tuple[str, str]]:
    """A run with a logged model directory and a registered version 1; yields (run_id, model name)."""
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", tracking["MLFLOW_S3_ENDPOINT_URL"])
    bucket = tracking["bucket"]
    marker = Path(tracking["root"]) / "run_id"
    if marker.exists():  # registered by an earlier test of this module
        yield marker.read_text(), "churn"
        return
    model_dir = Path(tracking["root"]) / "model"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    (model_dir / "model.pkl").write_bytes(b"\x80\x04pickled")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's own deprecation chatter is not under test
        client = MlflowClient()
        experiment = client.create_experiment("store-test", artifact_location=f"s3://{bucket}/mlruns")
        run = client.create_run(experiment)
        client.log_artifacts(run.info.run_id, str(model_dir), artifact_path="model")
        client.set_terminated(run.info.run_id)
        client.create_registered_model("churn")
        client.create_model_version("churn", f"s3://{bucket}/mlruns/{run.info.run_id}/artifacts/model",
                                    run_id=run.info.run_id)  # fmt: skip
    marker.write_text(run.info.run_id)
    yield run.info.run_id, "churn"
    mlflow.set_tracking_uri(cast(str, None))  # None restores the default; MLflow's hint leaves it out


def test_registered_version_is_fetched_from_s3_then_needs_nothing(
    registry: tuple[str, str], proxy: S3Proxy, settings: StoreSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, name = registry
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_model(f"models:/{name}/1", settings) as handle:
            assert (handle.path / "model.pkl").read_bytes() == b"\x80\x04pickled"
    assert proxy.counts["GET"] == 2
    proxy.reset()
    # A version number never changes: the next open asks neither MLflow (now unreachable) nor S3.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with open_model(f"models:/{name}/1", settings) as handle:
        assert (handle.path / "MLmodel").read_text() == "flavors: {}\n"
    assert sum(proxy.counts.values()) == 0


def test_run_artifact_uri(registry: tuple[str, str], proxy: S3Proxy, settings: StoreSettings) -> None:
    run_id, _ = registry
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_model(f"runs:/{run_id}/model", settings) as handle:
            assert sorted(p.name for p in handle.path.iterdir()) == ["MLmodel", "model.pkl"]


def test_unknown_version_is_an_error_naming_the_uri(
    registry: tuple[str, str], settings: StoreSettings
) -> None:
    with warnings.catch_warnings(), pytest.raises(StoreError, match="models:/churn/7"):
        warnings.simplefilter("ignore")
        open_model("models:/churn/7", settings)
