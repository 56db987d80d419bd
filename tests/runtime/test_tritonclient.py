"""The unmodified ``tritonclient.http`` client against a replica process (binary and JSON tensors)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from runtime.examples import logreg_rows
from tests.runtime.conftest import start_process, stop, wait_ready


@pytest.fixture(scope="module")
def client(onnx_model: Path) -> Iterator[triton.InferenceServerClient]:
    # One replica for the module: these tests only read from it.
    process = start_process(["--model-uri", str(onnx_model), "--name", "logreg", "--model-version", "1"])
    try:
        port = wait_ready(process)
        with triton.InferenceServerClient(url=f"127.0.0.1:{port}") as client:
            yield client
    finally:
        stop(process)


def _inputs(features: np.ndarray, *, binary: bool) -> list[triton.InferInput]:
    tensor = triton.InferInput("float_input", list(features.shape), "FP32")
    tensor.set_data_from_numpy(features, binary_data=binary)
    return [tensor]


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("logreg") and client.is_model_ready("logreg", "1")
    metadata = client.get_model_metadata("logreg")
    assert metadata["inputs"] == [{"name": "float_input", "datatype": "FP32", "shape": [-1, 20]}]
    assert client.get_server_metadata()["name"] == "zeroserve"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_inference(client: triton.InferenceServerClient, binary: bool) -> None:
    features = logreg_rows(20, 3).astype(np.float32)
    outputs = [
        triton.InferRequestedOutput("label", binary_data=binary),
        triton.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = client.infer("logreg", _inputs(features, binary=binary), outputs=outputs, request_id="abc")
    probabilities = result.as_numpy("probabilities")
    labels = result.as_numpy("label")
    assert probabilities.shape == (3, 2) and probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert labels.tolist() == probabilities.argmax(axis=1).tolist()
    assert result.get_response()["id"] == "abc"


def test_all_outputs_binary_by_default(client: triton.InferenceServerClient) -> None:
    features = logreg_rows(20, 2).astype(np.float32)
    result = client.infer("logreg", _inputs(features, binary=True))
    assert result.as_numpy("label").shape == (2,)


def test_errors_reach_the_client(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="not served here"):
        client.infer("other", _inputs(logreg_rows(20, 1).astype(np.float32), binary=True))
    with pytest.raises(InferenceServerException, match=r"expects shape \[-1, 20\]"):
        client.infer("logreg", _inputs(np.zeros((1, 3), np.float32), binary=True))
