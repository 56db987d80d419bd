"""The replica's optimized path: the loader picks the verified graph, and clients cannot tell.

In process: for every flavor, the optimized model's ``Prediction`` equals the native loader's. Through
real replica processes (``python -m runtime``): the MLflow scoring protocol answers byte-for-byte the
same with optimization on and off, the log says which path runs and why, and ``required`` on a model
that does not convert fails the start with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from runtime.config import ReplicaSettings
from runtime.errors import InvalidInput, ModelLoadError
from runtime.loaders import LoadedModel, load_model
from runtime.optimize.loader import OptimizedMlflowModel
from runtime.payload import Payload
from runtime.ready import READY_PREFIX
from runtime.types import Prediction
from runtime.validation import conform

ModelFactory = Callable[[str], tuple[Path, Any]]
REPO = Path(__file__).resolve().parents[3]


def tensors(inputs: Any) -> dict[str, np.ndarray[Any, Any]]:
    if isinstance(inputs, np.ndarray):
        return {"input-0": inputs}
    return {str(name): inputs[name].to_numpy() for name in inputs.columns}


def payloads(inputs: Any) -> list[Payload]:
    """Requests for ``inputs``: named arrays, and for a frame also ``dataframe_split`` rows."""
    named = [Payload(named=tensors(inputs))]
    if isinstance(inputs, np.ndarray):
        return named
    return [*named, Payload(split=([str(name) for name in inputs.columns], inputs.to_numpy().tolist()))]


def predict(model: LoadedModel, payload: Payload) -> Prediction:
    """What the replica does with a request: the model's own ``conform``, then ``predict``."""
    inputs, _ = model.conform(payload, allow_nan=False)
    return model.predict(inputs)


@pytest.mark.parametrize(
    "name",
    ["sklearn_random_forest", "sklearn_pipeline", "sklearn_rf_regressor", "xgboost", "lightgbm", "pytorch"],
)
def test_optimized_prediction_equals_the_native_loaders(
    model_factory: ModelFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("ZEROSERVE_CACHE_DIR", str(tmp_path))
    model_dir, held_out = model_factory(name)
    native = load_model(model_dir, settings=ReplicaSettings(optimization="off"))
    optimized = load_model(model_dir, settings=ReplicaSettings(optimization="auto"))
    assert not isinstance(native, OptimizedMlflowModel)
    assert isinstance(optimized, OptimizedMlflowModel)
    # Both carry the decision, for the ready line and the endpoint state.
    assert native.optimization is not None and native.optimization.path == "native"
    assert optimized.optimization is not None and optimized.optimization.path == "onnx"
    assert optimized.input_schema == native.input_schema
    for payload in payloads(held_out):
        expected = predict(native, payload)
        served = predict(optimized, payload)
        assert served.layout == expected.layout
        assert list(served.outputs) == list(expected.outputs)
        for key, values in expected.outputs.items():
            assert served.outputs[key].dtype == values.dtype and served.outputs[key].shape == values.shape
            if values.dtype.kind in "fc":
                np.testing.assert_allclose(
                    served.outputs[key], values, rtol=1e-5, atol=1e-5 * np.abs(values).max()
                )
            else:
                np.testing.assert_array_equal(served.outputs[key], values)


def test_split_rows_become_the_feature_matrix_validation_would_give(
    model_factory: ModelFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Float columns in signature order are read straight into the graph's matrix; every other request
    # goes through full validation. Both must give the same feeds and the same errors.
    monkeypatch.setenv("ZEROSERVE_CACHE_DIR", str(tmp_path))
    model_dir, held_out = model_factory("sklearn_random_forest")
    model = load_model(model_dir, settings=ReplicaSettings(optimization="auto"))
    assert isinstance(model, OptimizedMlflowModel) and model.optimization is not None
    assert model.optimization.adapter is not None
    (feed,) = model.optimization.adapter.feeds
    assert feed.kind == "matrix"
    frame = held_out.head(7)
    columns = [str(name) for name in frame.columns]
    expected = frame.to_numpy(dtype=np.float64).astype(feed.dtype)
    reordered = columns[::-1]
    variants = [
        Payload(split=(columns, frame.to_numpy().tolist())),
        Payload(split=(None, frame.to_numpy().tolist())),
        Payload(split=(reordered, frame[reordered].to_numpy().tolist())),
        Payload(split=(columns, [[repr(value) for value in row] for row in frame.to_numpy().tolist()])),
        Payload(named={name: frame[name].tolist() for name in columns}),
    ]
    for payload in variants:
        feeds, rows = model.conform(payload, allow_nan=False)
        assert rows == 7 and list(feeds) == [feed.graph_input]
        matrix = feeds[feed.graph_input]
        assert matrix.dtype == expected.dtype and matrix.flags.c_contiguous
        np.testing.assert_array_equal(matrix, expected)
    # An all-float request with NaN: the same 400 as validation's, unless NaN is allowed.
    with_nan = frame.to_numpy().tolist()
    with_nan[3][2] = float("nan")
    bad_requests = [
        Payload(split=(columns, with_nan)),
        Payload(split=(columns, [*frame.to_numpy().tolist(), [1.0]])),  # ragged
        Payload(split=(columns, [["high", *row[1:]] for row in frame.to_numpy().tolist()])),
        Payload(split=(columns[:-1], [row[:-1] for row in frame.to_numpy().tolist()])),  # a missing column
    ]
    for payload in bad_requests:
        with pytest.raises(InvalidInput) as validated:
            conform(payload, model.input_schema, allow_nan=False)
        with pytest.raises(InvalidInput) as served:
            model.conform(payload, allow_nan=False)
        assert served.value.message == validated.value.message
    feeds, _ = model.conform(Payload(split=(columns, with_nan)), allow_nan=True)
    assert np.isnan(feeds[feed.graph_input][3, 2]) and np.isnan(feeds[feed.graph_input]).sum() == 1


def test_loader_falls_back_or_fails_by_mode(
    model_factory: ModelFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("ZEROSERVE_CACHE_DIR", str(tmp_path))
    model_dir, _ = model_factory("sklearn_custom_step")
    with caplog.at_level("INFO", logger="zeroserve.optimize"):
        model = load_model(model_dir, settings=ReplicaSettings(optimization="auto"))
    assert not isinstance(model, OptimizedMlflowModel)
    assert any("serving natively" in r.message and "AddOne" in r.message for r in caplog.records)
    assert model.optimization is not None
    assert model.optimization.path == "native" and "AddOne" in model.optimization.reason
    with pytest.raises(ModelLoadError, match="optimization is required"):
        load_model(model_dir, settings=ReplicaSettings(optimization="required"))


# ---- real replica processes ----------------------------------------------------------------------------


class Replica:
    def __init__(self, process: subprocess.Popen[bytes], announced: dict[str, Any]) -> None:
        self.process = process
        self.announced = announced
        self.url = f"http://127.0.0.1:{announced['port']}"


@pytest.fixture
def start_replica(tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(model_dir: Path, *extra: str) -> Replica:
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime", "--model-uri", model_dir.as_uri(), "--port", "0", *extra],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "ZEROSERVE_CACHE_DIR": str(tmp_path / "cache"), "ZEROSERVE_LOG_LEVEL": "INFO"},
        )
        processes.append(process)
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            if line.startswith(READY_PREFIX.encode()):
                return Replica(process, orjson.loads(line.split(b" ", 1)[1]))
        raise RuntimeError(f"replica did not start (exit {process.poll()})")

    try:
        yield start
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


def stop(replica: Replica) -> str:
    replica.process.terminate()
    assert replica.process.stderr is not None
    _, stderr = replica.process.communicate(timeout=30)
    return stderr.decode(errors="replace")


def test_replica_answers_the_same_with_optimization_on_and_off(
    model_factory: ModelFactory, start_replica: Callable[..., Replica]
) -> None:
    model_dir, held_out = model_factory("sklearn_pipeline")
    rows = held_out.head(50)
    bodies = [
        {"dataframe_split": {"columns": list(rows.columns), "data": rows.to_numpy().tolist()}},
        {"dataframe_records": rows.head(1).to_dict(orient="records")},
        {"inputs": {name: rows[name].tolist() for name in rows.columns}},
    ]
    answers: dict[str, list[bytes]] = {}
    logs: dict[str, str] = {}
    paths: dict[str, str] = {}
    for mode in ("auto", "off"):
        replica = start_replica(model_dir, "--optimization", mode)
        paths[mode] = replica.announced["optimization"]["path"]
        with httpx.Client(base_url=replica.url, timeout=30) as client:
            answers[mode] = []
            for body in bodies:
                response = client.post("/invocations", json=body)
                assert response.status_code == 200, response.text
                answers[mode].append(response.content)
            missing = client.post(
                "/invocations", json={"dataframe_split": {"columns": ["x0"], "data": [[1.0]]}}
            )
            assert missing.status_code == 400 and "x1" in missing.text
        logs[mode] = stop(replica)
    assert answers["auto"] == answers["off"]
    assert paths == {"auto": "onnx", "off": "native"}  # the ready line says which path runs
    assert orjson.loads(answers["auto"][0])["predictions"][0] in ("bronze", "gold", "silver")
    assert "serving sklearn model as ONNX (converted now; " in logs["auto"]
    assert "serving natively (optimization=off): optimization is off" in logs["off"]


def test_replica_with_required_optimization_fails_to_start_with_the_reason(
    model_factory: ModelFactory, tmp_path: Path
) -> None:
    model_dir, _ = model_factory("sklearn_custom_step")
    completed = subprocess.run(
        [sys.executable, "-m", "runtime", "--model-uri", model_dir.as_uri(), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        env={**os.environ, "ZEROSERVE_CACHE_DIR": str(tmp_path), "ZEROSERVE_OPTIMIZATION": "required"},
    )
    assert completed.returncode == 1
    stderr = completed.stderr.decode()
    assert "cannot load model" in stderr and "optimization is required" in stderr and "AddOne" in stderr
    assert READY_PREFIX not in completed.stdout.decode()
