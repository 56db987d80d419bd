"""Example models, built locally and deterministically (fixed seeds, nothing downloaded).

Used by the tests and benchmarks of every part of zeroserve, and by ``zeroserve replica --example``.
Each ``make_*`` writes one model into ``directory`` (which must not exist or be empty) and returns its
path. scikit-learn, skl2onnx, mlflow and torch are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

PROPENSITY_COLUMNS: dict[str, str] = {
    "age": "long",
    "tenure_months": "long",
    "num_purchases": "long",
    "avg_basket": "double",
    "days_since_last_visit": "long",
    "is_member": "boolean",
}

_SEED = 20240611


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    # mlflow's save path trips deprecation warnings of newer pandas/torch versions; they are the
    # libraries' business, and they must not fail callers that turn warnings into errors (the tests).
    # Its log lines (pickling advice, "validating input example") are about choices these examples make
    # on purpose, and would land unformatted in the middle of `zeroserve up`'s first start.
    mlflow_logger = logging.getLogger("mlflow")
    level = mlflow_logger.level
    mlflow_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        mlflow_logger.setLevel(level)


def _target(directory: str | os.PathLike[str]) -> Path:
    path = Path(directory)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def feature_names(n_features: int) -> list[str]:
    return [f"f{index}" for index in range(n_features)]


def logreg_rows(n_features: int = 20, rows: int = 1, seed: int = 1) -> np.ndarray[Any, Any]:
    """Request rows for the logistic-regression examples (float64, standard normal)."""
    return np.random.default_rng(seed).standard_normal((rows, n_features))


def _logreg(n_features: int) -> Any:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(_SEED)
    features = rng.standard_normal((2000, n_features))
    weights = rng.standard_normal(n_features)
    labels = (features @ weights + 0.5 * rng.standard_normal(2000) > 0).astype(np.int64)
    frame = pd.DataFrame(features, columns=feature_names(n_features))  # fitted with feature names
    return LogisticRegression(max_iter=500).fit(frame, labels)


def make_logreg_onnx(directory: str | os.PathLike[str], n_features: int = 20) -> Path:
    """LogisticRegression on ``n_features`` floats as ONNX: input ``float_input`` [N, n_features];
    outputs ``label`` (int64 [N]) and ``probabilities`` (float [N, 2])."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    path = _target(directory)
    path.mkdir(exist_ok=True)
    onnx_model = convert_sklearn(
        _logreg(n_features),
        initial_types=[("float_input", FloatTensorType([None, n_features]))],
        options={"zipmap": False},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    (path / "model.onnx").write_bytes(onnx_model.SerializeToString())
    return path


def make_logreg_mlflow_sklearn(directory: str | os.PathLike[str], n_features: int = 20) -> Path:
    """The same LogisticRegression as an MLflow sklearn model with columns ``f0..f{n-1}`` (double),
    a signature and an input example; predictions are class labels."""
    import pandas as pd

    from runtime.loaders._imports import quiet_import

    mlflow_sklearn = quiet_import("mlflow.sklearn")
    from mlflow.models import infer_signature

    path = _target(directory)
    model = _logreg(n_features)
    example = pd.DataFrame(logreg_rows(n_features, 2), columns=feature_names(n_features))
    with _quiet_libraries():
        mlflow_sklearn.save_model(
            model,
            str(path),
            signature=infer_signature(example, model.predict(example)),
            input_example=example,
            pip_requirements=["scikit-learn", "mlflow"],
            serialization_format=mlflow_sklearn.SERIALIZATION_FORMAT_PICKLE,
        )
    return path


def make_custom_pyfunc(directory: str | os.PathLike[str]) -> Path:
    """A custom pyfunc (columns ``x``, ``y`` double; param ``scale`` double = 1.0) returning a score."""
    import pandas as pd

    from runtime.loaders._imports import quiet_import

    pyfunc = quiet_import("mlflow.pyfunc")
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from runtime._example_models import ScaledSumModel

    path = _target(directory)
    signature = ModelSignature(
        inputs=Schema([ColSpec("double", "x"), ColSpec("double", "y")]),
        outputs=Schema([ColSpec("double")]),
        params=ParamSchema([ParamSpec("scale", "double", 1.0)]),
    )
    with _quiet_libraries():
        pyfunc.save_model(
            str(path),
            python_model=ScaledSumModel(),
            signature=signature,
            input_example=pd.DataFrame({"x": [1.0, 2.0], "y": [0.5, -1.0]}),
            pip_requirements=["mlflow"],
        )
    return path


def _propensity_data(rows: int, rng: np.random.Generator) -> tuple[Any, np.ndarray[Any, Any]]:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, rows),
            "tenure_months": rng.integers(0, 120, rows),
            "num_purchases": rng.poisson(6, rows),
            "avg_basket": np.round(rng.gamma(2.0, 30.0, rows), 2),
            "days_since_last_visit": rng.integers(0, 365, rows),
            "is_member": rng.random(rows) < 0.4,
        }
    )
    logit = (
        -1.0
        + 0.08 * frame["num_purchases"]
        + 0.01 * frame["tenure_months"]
        - 0.012 * frame["days_since_last_visit"]
        + 0.006 * frame["avg_basket"]
        + 0.9 * frame["is_member"]
        - 0.01 * (frame["age"] - 45).abs()
    )
    labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return frame, labels


def make_propensity_mlflow(directory: str | os.PathLike[str]) -> Path:
    """A purchase-propensity model (scikit-learn pipeline in a pyfunc) with named, typed columns
    ``age, tenure_months, num_purchases, avg_basket, days_since_last_visit, is_member`` -> ``probability``."""
    from runtime.loaders._imports import quiet_import

    pyfunc = quiet_import("mlflow.pyfunc")
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from runtime._example_models import PropensityModel

    path = _target(directory)
    rng = np.random.default_rng(_SEED)
    frame, labels = _propensity_data(5000, rng)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    pipeline.fit(frame.astype("float64").to_numpy(), labels)
    signature = ModelSignature(
        inputs=Schema([ColSpec(type_name, name) for name, type_name in PROPENSITY_COLUMNS.items()]),
        outputs=Schema([ColSpec("double", "probability")]),
    )
    with _quiet_libraries():
        pyfunc.save_model(
            str(path),
            python_model=PropensityModel(pipeline),
            signature=signature,
            input_example=frame.head(2),
            pip_requirements=["mlflow", "scikit-learn"],
        )
    return path


def propensity_request(rows: int = 1) -> dict[str, Any]:
    """A ready-to-send ``dataframe_split`` body for the propensity model."""
    frame, _ = _propensity_data(rows, np.random.default_rng(7))
    return {"dataframe_split": {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}}


def _tiny_classifier() -> Any:
    import torch

    from runtime._example_torch import TinyClassifier

    torch.manual_seed(_SEED % 2**31)
    return TinyClassifier().eval()


_TORCH_SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}],
}


def make_torchscript(directory: str | os.PathLike[str]) -> Path:
    """A TorchScript classifier ``x`` [N, 4] float32 -> ``scores`` [N, 3], with a ``signature.json``."""
    import torch

    path = _target(directory)
    path.mkdir(exist_ok=True)
    with _quiet_libraries():  # torch.jit is deprecated in favour of torch.export, yet widely deployed
        torch.jit.script(_tiny_classifier()).save(str(path / "model.pt"))
    (path / "signature.json").write_text(json.dumps(_TORCH_SIGNATURE))
    return path


def make_torch_export(directory: str | os.PathLike[str]) -> Path:
    """The same classifier as a ``torch.export`` program with a dynamic batch dimension."""
    import torch

    path = _target(directory)
    path.mkdir(exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with _quiet_libraries():
        program = torch.export.export(
            _tiny_classifier(), (torch.zeros(2, 4),), dynamic_shapes={"x": {0: batch}}
        )
        torch.export.save(program, str(path / "model.pt2"))
    return path


def make_mlflow_pytorch(directory: str | os.PathLike[str]) -> Path:
    """The same classifier through MLflow's pytorch flavor, with a tensor signature."""
    from runtime.loaders._imports import quiet_import

    pytorch_flavor = quiet_import("mlflow.pytorch")
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    path = _target(directory)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 4), "x")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3), "scores")]),
    )
    with _quiet_libraries():
        pytorch_flavor.save_model(
            _tiny_classifier(),
            str(path),
            signature=signature,
            pip_requirements=["torch", "mlflow"],
            serialization_format="pickle",
        )
    return path
