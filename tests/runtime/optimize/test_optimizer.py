"""optimize_model on real MLflow models of each convertible flavor: conversion, verification, fallback,
the cached decision (tamper detection included) and single flight across processes."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.errors import InvalidParameterValue, ModelLoadError
from runtime.optimize import OptimizationResult, OptimizedModel, optimize_model

ModelFactory = Callable[[str], tuple[Path, Any]]
REPO = Path(__file__).resolve().parents[3]


def native_predict(model_dir: Path, inputs: Any) -> Any:
    import mlflow.pyfunc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlflow.pyfunc.load_model(str(model_dir)).predict(inputs)


def request_arrays(inputs: Any) -> dict[str, np.ndarray[Any, Any]]:
    """A request as the replica holds it: one array per column, or the single tensor."""
    if isinstance(inputs, np.ndarray):
        return {"input-0": inputs}
    return {str(name): inputs[name].to_numpy() for name in inputs.columns}


@pytest.mark.parametrize(
    ("name", "flavor", "converter", "labels"),
    [
        ("sklearn_logreg", "sklearn", "skl2onnx", True),
        ("sklearn_random_forest", "sklearn", "skl2onnx", True),
        ("sklearn_rf_regressor", "sklearn", "skl2onnx", False),
        ("sklearn_pipeline", "sklearn", "skl2onnx", True),
        ("xgboost", "xgboost", "onnxmltools", True),
        ("lightgbm", "lightgbm", "onnxmltools", False),
        ("pytorch", "pytorch", "torch.onnx", False),
    ],
)
def test_flavor_is_converted_and_answers_like_native_on_held_out_data(
    model_factory: ModelFactory, tmp_path: Path, name: str, flavor: str, converter: str, labels: bool
) -> None:
    model_dir, held_out = model_factory(name)

    result = optimize_model(model_dir, cache_dir=tmp_path)

    assert result.path == "onnx", result.reason
    assert (result.flavor, result.converter, result.from_cache) == (flavor, converter, False)
    assert result.onnx_model_path is not None and result.onnx_model_path.is_file()
    assert result.verification is not None and result.verification.rows > 300
    assert "verified on" in result.reason
    expected = native_predict(model_dir, held_out)
    served = OptimizedModel.load(result.onnx_model_path, result.adapter).predict(request_arrays(held_out))  # type: ignore[arg-type]
    assert type(served) is type(expected)
    assert served.dtype == expected.dtype and served.shape == expected.shape
    if labels:
        np.testing.assert_array_equal(served, expected)
    else:
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5 * scale)


def test_string_labels_keep_their_values_and_dtype(model_factory: ModelFactory, tmp_path: Path) -> None:
    model_dir, held_out = model_factory("sklearn_pipeline")
    result = optimize_model(model_dir, cache_dir=tmp_path)
    assert result.adapter is not None and result.onnx_model_path is not None
    served = OptimizedModel.load(result.onnx_model_path, result.adapter).predict(request_arrays(held_out))
    assert served.dtype.kind == "U"
    assert set(served) <= {"bronze", "gold", "silver"}
    assert len(set(served)) == 3


def test_unconvertible_step_falls_back_with_the_reason(model_factory: ModelFactory, tmp_path: Path) -> None:
    model_dir, _ = model_factory("sklearn_custom_step")

    result = optimize_model(model_dir, cache_dir=tmp_path)

    assert result.path == "native"
    assert result.onnx_model_path is None and result.adapter is None
    assert "AddOne" in result.reason, result.reason
    assert "serving natively" in result.describe() and "AddOne" in result.describe()
    # The rejection is cached: the next replica does not try again.
    again = optimize_model(model_dir, cache_dir=tmp_path)
    assert (again.path, again.from_cache, again.reason) == ("native", True, result.reason)
    assert "convert_s" not in again.timings


def test_required_fails_clearly_on_an_unconvertible_model(
    model_factory: ModelFactory, tmp_path: Path
) -> None:
    model_dir, _ = model_factory("sklearn_custom_step")
    with pytest.raises(ModelLoadError, match=r"optimization is required.*AddOne") as caught:
        optimize_model(model_dir, mode="required", cache_dir=tmp_path)
    assert caught.value.status_code == 500


def test_required_passes_on_a_convertible_model(model_factory: ModelFactory, tmp_path: Path) -> None:
    model_dir, _ = model_factory("sklearn_logreg")
    assert optimize_model(model_dir, mode="required", cache_dir=tmp_path).path == "onnx"


def test_off_touches_nothing(model_factory: ModelFactory, tmp_path: Path) -> None:
    model_dir, _ = model_factory("sklearn_logreg")
    result = optimize_model(model_dir, mode="off", cache_dir=tmp_path / "cache")
    assert (result.path, result.reason) == ("native", "optimization is off")
    assert not (tmp_path / "cache").exists()


def test_bad_mode_and_tolerance_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterValue, match="optimization must be one of"):
        optimize_model(tmp_path, mode="fast", cache_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterValue, match="tolerance"):
        optimize_model(tmp_path, cache_dir=tmp_path, rtol=0.0)


def test_not_an_mlflow_model_runs_natively(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    result = optimize_model(tmp_path / "model", cache_dir=tmp_path)
    assert result.path == "native" and "no MLmodel file" in result.reason
    with pytest.raises(ModelLoadError, match="no MLmodel file"):
        optimize_model(tmp_path / "model", mode="required", cache_dir=tmp_path)


def test_a_model_without_signature_runs_natively(model_factory: ModelFactory, tmp_path: Path) -> None:
    import shutil

    import yaml

    source, _ = model_factory("sklearn_logreg")
    model_dir = tmp_path / "unsigned"
    shutil.copytree(source, model_dir)
    document = yaml.safe_load((model_dir / "MLmodel").read_text())
    document.pop("signature")
    (model_dir / "MLmodel").write_text(yaml.safe_dump(document))
    result = optimize_model(model_dir, cache_dir=tmp_path)
    assert result.path == "native" and "no input signature" in result.reason


def test_cached_graph_is_reused_and_a_tampered_one_rebuilt(
    model_factory: ModelFactory, tmp_path: Path
) -> None:
    model_dir, held_out = model_factory("sklearn_random_forest")
    first = optimize_model(model_dir, cache_dir=tmp_path)
    assert first.path == "onnx" and not first.from_cache and first.onnx_model_path is not None
    original = first.onnx_model_path.read_bytes()  # converters are not byte-for-byte deterministic

    cached = optimize_model(model_dir, cache_dir=tmp_path)
    assert (cached.path, cached.from_cache, cached.onnx_model_path) == ("onnx", True, first.onnx_model_path)
    assert "convert_s" not in cached.timings and "native_load_s" not in cached.timings

    # Same size, one byte changed: only the checksum can tell.
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF
    first.onnx_model_path.write_bytes(bytes(tampered))

    rebuilt = optimize_model(model_dir, cache_dir=tmp_path)
    assert rebuilt.path == "onnx" and not rebuilt.from_cache
    assert "checksum mismatch" in rebuilt.reason
    assert rebuilt.onnx_model_path is not None and rebuilt.onnx_model_path.read_bytes() != bytes(tampered)
    # The rebuilt graph carries a checksum that holds again, so the next replica reuses it.
    assert optimize_model(model_dir, cache_dir=tmp_path).from_cache
    served = OptimizedModel.load(rebuilt.onnx_model_path, rebuilt.adapter).predict(request_arrays(held_out))  # type: ignore[arg-type]
    np.testing.assert_array_equal(served, native_predict(model_dir, held_out))


def test_a_changed_model_or_tolerance_converts_again(model_factory: ModelFactory, tmp_path: Path) -> None:
    import shutil

    source, _ = model_factory("sklearn_logreg")
    model_dir = tmp_path / "copy"
    shutil.copytree(source, model_dir)
    first = optimize_model(model_dir, cache_dir=tmp_path)
    assert optimize_model(model_dir, cache_dir=tmp_path, rtol=1e-4).cache_key != first.cache_key
    (model_dir / "README").write_text("a new file is a new model version")
    second = optimize_model(model_dir, cache_dir=tmp_path)
    assert second.cache_key != first.cache_key and not second.from_cache


_CHILD = """
import json, sys, warnings
warnings.simplefilter("ignore")
from pathlib import Path
from runtime.optimize import optimize_model
result = optimize_model(Path(sys.argv[1]), cache_dir=Path(sys.argv[2]))
print(json.dumps({"path": result.path, "from_cache": result.from_cache, "key": result.cache_key,
                  "onnx": str(result.onnx_model_path), "timings": result.timings}))
"""


def test_two_processes_starting_at_once_convert_once(model_factory: ModelFactory, tmp_path: Path) -> None:
    model_dir, _ = model_factory("sklearn_random_forest")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(model_dir), str(tmp_path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = []
    try:
        for child in children:
            stdout, stderr = child.communicate(timeout=120)
            assert child.returncode == 0, stderr[-2000:]
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert [output["path"] for output in outputs] == ["onnx", "onnx"]
    assert sorted(output["from_cache"] for output in outputs) == [False, True]
    assert outputs[0]["key"] == outputs[1]["key"] and outputs[0]["onnx"] == outputs[1]["onnx"]
    # Exactly one entry exists, and nothing is left half-written.
    entries = [p for p in (tmp_path / "optimized").iterdir() if p.name not in ("locks", "tmp")]
    assert len(entries) == 1
    assert list((tmp_path / "optimized" / "tmp").iterdir()) == []


def test_describe_names_path_and_versions(model_factory: ModelFactory, tmp_path: Path) -> None:
    model_dir, _ = model_factory("sklearn_logreg")
    result: OptimizationResult = optimize_model(model_dir, cache_dir=tmp_path)
    line = result.describe()
    assert line.startswith("serving sklearn model as ONNX (converted now;")
    assert f"skl2onnx {result.converter_versions['skl2onnx']}" in line
    assert set(result.converter_versions) >= {"skl2onnx", "scikit-learn", "onnx", "onnxruntime"}


def test_an_unusable_cache_falls_back_in_auto_and_fails_required(
    model_factory: ModelFactory, tmp_path: Path
) -> None:
    model_dir, _ = model_factory("sklearn_logreg")
    not_a_directory = tmp_path / "cache"
    not_a_directory.write_text("a file where the cache should be")
    result = optimize_model(model_dir, cache_dir=not_a_directory)
    assert result.path == "native" and "conversion cache is unusable" in result.reason
    with pytest.raises(ModelLoadError, match="conversion cache is unusable"):
        optimize_model(model_dir, mode="required", cache_dir=not_a_directory)
