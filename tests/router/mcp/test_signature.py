"""Signatures read from model directories as the runtime's example models write them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.mcp.signature import (
    UNKNOWN,
    Column,
    ColumnSchema,
    Param,
    SignatureError,
    Tensor,
    TensorSchema,
    read_signature,
)
from runtime.examples import PROPENSITY_COLUMNS, make_custom_pyfunc, make_logreg_onnx, make_propensity_mlflow


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_propensity_mlflow(root / "propensity")
    make_custom_pyfunc(root / "scaled-sum")
    make_logreg_onnx(root / "fraud", n_features=5)
    return root


def test_mlflow_column_signature(models: Path) -> None:
    signature = read_signature(models / "propensity")
    assert signature.source == "MLmodel"
    assert signature.inputs == ColumnSchema(tuple(
        Column(name, {"type": type_name}) for name, type_name in PROPENSITY_COLUMNS.items()))
    assert signature.outputs == ColumnSchema((Column("probability", {"type": "double"}),))


def test_mlflow_params(models: Path) -> None:
    signature = read_signature(models / "scaled-sum")
    assert signature.params == (Param("scale", "double", 1.0),)
    assert signature.outputs == ColumnSchema((Column(None, {"type": "double"}),))


def test_onnx_graph(models: Path) -> None:
    signature = read_signature(models / "fraud")
    assert signature.source == "ONNX graph"
    assert signature.inputs == TensorSchema((Tensor("float_input", "float32", (-1, 5)),))
    assert signature.outputs == TensorSchema((Tensor("label", "int64", (-1,)),
                                              Tensor("probabilities", "float32", (-1, 2))))
    assert read_signature(models / "fraud" / "model.onnx") == signature  # a single file


def test_mlflow_tensor_signature(tmp_path: Path) -> None:
    spec = {"dtype": "float32", "shape": [-1, 4]}
    inputs = json.dumps([{"name": "x", "type": "tensor", "tensor-spec": spec}])
    outputs = json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}])
    (tmp_path / "MLmodel").write_text(
        "flavors:\n  pytorch: {}\nsignature:\n"
        f"  inputs: '{inputs}'\n  outputs: '{outputs}'\n  params: null\n"
    )
    signature = read_signature(tmp_path)
    assert signature.inputs == TensorSchema((Tensor("x", "float32", (-1, 4)),))
    assert signature.outputs == TensorSchema((Tensor(None, "float32", (-1, 3)),))


def test_signature_json_of_torch_models(tmp_path: Path) -> None:
    # The runtime's convention for TorchScript and torch.export models (see runtime.loaders.torch).
    (tmp_path / "model.pt").write_bytes(b"not read")
    (tmp_path / "signature.json").write_text(json.dumps({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}],
    }))
    signature = read_signature(tmp_path)
    assert signature.source == "signature.json"
    assert signature.inputs == TensorSchema((Tensor("x", "float32", (-1, 4)),))
    assert signature.outputs == TensorSchema((Tensor("scores", "float32", (-1, 3)),))


def test_models_without_a_signature(tmp_path: Path) -> None:
    (tmp_path / "no-signature").mkdir()
    (tmp_path / "no-signature" / "MLmodel").write_text("flavors:\n  python_function: {}\n")
    assert read_signature(tmp_path / "no-signature").inputs is None
    (tmp_path / "torchscript").mkdir()
    (tmp_path / "torchscript" / "model.pt").write_bytes(b"weights")
    assert read_signature(tmp_path / "torchscript") == UNKNOWN


@pytest.mark.parametrize(("name", "content"), [
    ("MLmodel", "flavors: [unclosed"),
    ("MLmodel", "signature:\n  inputs: '[{\"name\": \"x\"}]'\n"),  # a column without a type
    ("signature.json", '{"inputs": [{"name": "x", "datatype": "FP128"}]}'),
    ("model.onnx", "not a protobuf"),
])
def test_broken_signature_files_are_named(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(SignatureError, match=name.split(".")[0]):
        read_signature(tmp_path)
