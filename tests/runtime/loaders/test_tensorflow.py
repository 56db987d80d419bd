"""TensorFlow models, made here (a small Keras network; nothing downloaded): a bare SavedModel directory
and MLflow's tensorflow flavor, served natively and from a verified tf2onnx conversion, by real replica
processes over both protocols."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from runtime.config import ReplicaSettings
from runtime.loaders import detect, load_model
from tests.runtime.conftest import ReplicaProcess

pytestmark = pytest.mark.slow
FEATURES = 8


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    pytest.importorskip("tensorflow", reason="the tensorflow extra is not installed")
    import keras
    import mlflow
    from mlflow.models import infer_signature

    root = tmp_path_factory.mktemp("tensorflow")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    network = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
    rows = np.random.default_rng(0).standard_normal((32, FEATURES)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's and Keras' own deprecation notes while saving
        mlflow.tensorflow.save_model(network, str(root / "mlflow"),
                                     signature=infer_signature(rows, network.predict(rows, verbose=0)),
                                     input_example=rows[:4])
        network.export(str(root / "saved_model"), verbose=False)
    return {"mlflow": root / "mlflow", "saved_model": root / "saved_model", "rows": rows,
            "expected": network.predict(rows, verbose=0)}


def test_a_saved_model_directory_is_served_through_its_signature(keras_models: dict[str, Any]) -> None:
    assert detect(keras_models["saved_model"])[0] == "tensorflow.saved_model"
    model = load_model(keras_models["saved_model"], settings=ReplicaSettings())
    assert model.flavor == "tensorflow.saved_model"
    [spec] = model.input_schema.inputs  # type: ignore[union-attr]
    assert (spec.name, spec.shape) == ("features", (-1, FEATURES))
    answer = model.predict({"features": keras_models["rows"]})
    np.testing.assert_allclose(next(iter(answer.outputs.values())), keras_models["expected"], rtol=1e-5)


def test_a_replica_serves_the_saved_model_over_both_protocols(
    keras_models: dict[str, Any], start_replica: Callable[..., ReplicaProcess]
) -> None:
    replica = start_replica("--model-uri", str(keras_models["saved_model"]), "--name", "keras")
    rows = keras_models["rows"][:3]
    with httpx.Client(base_url=replica.url, timeout=30) as client:
        mlflow_answer = client.post("/invocations", json={"inputs": {"features": rows.tolist()}})
        assert mlflow_answer.status_code == 200, mlflow_answer.text
        expected = keras_models["expected"][:3]
        np.testing.assert_allclose(mlflow_answer.json()["predictions"], expected, rtol=1e-5)
        v2 = client.post("/v2/models/keras/infer", json={"inputs": [
            {"name": "features", "shape": [3, FEATURES], "datatype": "FP32", "data": rows.ravel().tolist()}]})
        assert v2.status_code == 200, v2.text
        np.testing.assert_allclose(np.reshape(v2.json()["outputs"][0]["data"], (3, 2)),
                                   keras_models["expected"][:3], rtol=1e-5)
        wrong = client.post("/invocations", json={"inputs": {"features": [[1.0, 2.0]]}})
        assert wrong.status_code == 400 and "features" in wrong.text


def test_the_mlflow_tensorflow_flavor_is_converted_verified_and_answers_as_natively(
    keras_models: dict[str, Any], start_replica: Callable[..., ReplicaProcess]
) -> None:
    rows = keras_models["rows"][:5]
    answers = {}
    for mode in ("auto", "off"):
        replica = start_replica("--model-uri", str(keras_models["mlflow"]), "--optimization", mode)
        optimization = replica.announced["optimization"]
        assert optimization["path"] == ("onnx" if mode == "auto" else "native"), optimization
        with httpx.Client(base_url=replica.url, timeout=30) as client:
            response = client.post("/invocations", json={"inputs": rows.tolist()})
            assert response.status_code == 200, response.text
            answers[mode] = np.asarray(response.json()["predictions"])
    np.testing.assert_allclose(answers["off"], keras_models["expected"][:5], rtol=1e-5)
    np.testing.assert_allclose(answers["auto"], answers["off"], rtol=1e-4, atol=1e-6)
