"""Loader selection by directory content, and every flavor loading, warming up and predicting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.config import ReplicaSettings
from runtime.errors import InvalidInput, ModelLoadError
from runtime.examples import logreg_rows, make_mlflow_pytorch, make_torch_export
from runtime.loaders import detect, load_model, preload
from runtime.payload import Payload
from runtime.types import ColumnSchema, Layout, TensorSchema
from runtime.validation import conform
from runtime.warmup import warm_up

NATIVE = ReplicaSettings(optimization="off")  # the MLflow flavors themselves, not an ONNX conversion


def test_detect_by_content(
    tmp_path: Path, onnx_model: Path, sklearn_model: Path, torchscript_model: Path
) -> None:
    assert detect(onnx_model) == ("onnx", onnx_model / "model.onnx")
    assert detect(onnx_model / "model.onnx") == ("onnx", onnx_model / "model.onnx")
    assert detect(sklearn_model) == ("mlflow", sklearn_model)
    assert detect(torchscript_model) == ("torchscript", torchscript_model / "model.pt")
    (tmp_path / "two").mkdir()
    for name in ("a.onnx", "b.onnx"):
        (tmp_path / "two" / name).write_bytes(b"")
    with pytest.raises(ModelLoadError, match="several onnx models"):
        detect(tmp_path / "two")
    with pytest.raises(ModelLoadError, match="does not exist"):
        detect(tmp_path / "missing")
    (tmp_path / "weird.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="cannot tell"):
        detect(tmp_path / "weird.bin")


def test_load_errors_name_the_path(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "MLmodel").write_text("flavors:\n  keras: {}\n")
    with pytest.raises(ModelLoadError, match="no python_function flavor"):
        load_model(tmp_path / "m")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "MLmodel").write_text("{not yaml")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(tmp_path / "bad")


def test_onnx_schema_and_prediction(onnx_model: Path) -> None:
    model = load_model(onnx_model)
    assert isinstance(model.input_schema, TensorSchema)
    assert model.input_schema.inputs[0].shape == (-1, 20)
    assert [spec.name for spec in model.output_specs] == ["label", "probabilities"]
    warm = warm_up(model)
    assert warm.ran and warm.batchable and warm.source == "schema"
    inputs, rows = conform(Payload(unnamed=logreg_rows(20, 4).tolist()), model.input_schema, allow_nan=False)
    prediction = model.predict(inputs)
    assert prediction.layout is Layout.COLUMNS and prediction.rows() == rows == 4


def test_mlflow_sklearn_matches_onnx(onnx_model: Path, sklearn_model: Path) -> None:
    native = load_model(sklearn_model, settings=NATIVE)
    assert native.flavor == "mlflow.pyfunc" and isinstance(native.input_schema, ColumnSchema)
    warm = warm_up(native)
    assert warm.source == "input example" and warm.batchable
    rows = logreg_rows(20, 5)
    columns = [column.name for column in native.input_schema.columns]
    inputs, _ = conform(Payload(split=(columns, rows.tolist())), native.input_schema, allow_nan=False)
    (labels,) = native.predict(inputs).outputs.values()
    onnx = load_model(onnx_model)
    onnx_inputs, _ = conform(Payload(unnamed=rows.tolist()), onnx.input_schema, allow_nan=False)
    assert labels.tolist() == onnx.predict(onnx_inputs).outputs["label"].tolist()


def test_custom_pyfunc_params(custom_model: Path) -> None:
    model = load_model(custom_model, settings=NATIVE)
    assert model.accepts_params
    inputs, _ = conform(Payload(named={"x": [1.0], "y": [1.0]}), model.input_schema, allow_nan=False)
    assert next(iter(model.predict(inputs).outputs.values())).tolist() == [3.0]
    assert next(iter(model.predict(inputs, {"scale": 10.0}).outputs.values())).tolist() == [30.0]
    with pytest.raises(InvalidInput):
        model.predict(inputs, {"scale": "lots"})


def test_propensity_answers_probabilities_as_records(propensity_model: Path) -> None:
    from runtime.examples import propensity_request
    from runtime.protocol.mlflow import decode_document

    model = load_model(propensity_model, settings=NATIVE)
    inputs, rows = conform(decode_document(propensity_request(50)), model.input_schema, allow_nan=False)
    prediction = model.predict(inputs)
    assert prediction.layout is Layout.RECORDS and list(prediction.outputs) == ["probability"]
    probabilities = prediction.outputs["probability"]
    assert probabilities.shape == (rows,) and ((probabilities > 0) & (probabilities < 1)).all()
    assert probabilities.std() > 0.05  # it tells customers apart


def test_torchscript_with_a_signature_file(torchscript_model: Path) -> None:
    model = load_model(torchscript_model)
    assert model.flavor == "torchscript"
    assert warm_up(model).batchable
    inputs, _ = conform(Payload(named={"x": [[0.1, 0.2, 0.3, 0.4]] * 3}), model.input_schema, allow_nan=False)
    scores = model.predict(inputs).outputs["scores"]
    assert scores.shape == (3, 3) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)


def test_torch_export_and_mlflow_pytorch_agree_with_torchscript(
    tmp_path: Path, torchscript_model: Path
) -> None:
    models = [
        load_model(torchscript_model),
        load_model(make_torch_export(tmp_path / "exported")),
        load_model(make_mlflow_pytorch(tmp_path / "mlflow-pytorch"), settings=NATIVE),
    ]
    assert [model.flavor for model in models] == ["torchscript", "torch.export", "mlflow.pytorch"]
    features = np.random.default_rng(3).standard_normal((6, 4)).astype(np.float32)
    answers = []
    for model in models:
        assert isinstance(model.input_schema, TensorSchema)
        assert model.input_schema.inputs[0].shape == (-1, 4)  # a dynamic batch dimension
        assert warm_up(model).batchable
        answers.append(next(iter(model.predict({"x": features}).outputs.values())))
    assert np.allclose(answers[0], answers[1], atol=1e-6) and np.allclose(answers[0], answers[2], atol=1e-6)
    with pytest.raises(InvalidInput):
        models[0].predict({"x": np.zeros((2, 5), np.float32)})  # checked by the graph itself


def test_preload_imports_flavor_libraries() -> None:
    preload(["onnx"])
    with pytest.raises(ValueError, match="unknown flavor"):
        preload(["caffe"])
