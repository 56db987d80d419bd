from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


def write_logreg_onnx(directory: Path) -> Path:
    """A 4-feature logistic regression as ONNX, made locally (nothing is downloaded)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    features = np.random.RandomState(0).rand(64, 4).astype(np.float32)
    labels = (features[:, 0] > 0.5).astype(np.int64)
    model = LogisticRegression().fit(features, labels)
    onnx_model = to_onnx(model, features[:1], options={id(model): {"zipmap": False}})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(onnx_model.SerializeToString())
    return directory


@pytest.fixture(scope="session")
def onnx_model_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return (write_logreg_onnx(tmp_path_factory.mktemp("models") / "logreg")).as_uri()


@pytest.fixture(scope="session")
def broken_model_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("models") / "broken"
    directory.mkdir()
    (directory / "model.onnx").write_bytes(b"this is not an onnx model")
    return directory.as_uri()


@pytest.fixture
def replica_environment(tmp_path: Path) -> dict[str, str]:
    """The environment replicas start with: this test's own cache, never the user's ~/.zeroserve."""
    return {**os.environ, "ZEROSERVE_HOME": str(tmp_path / "home"), "ZEROSERVE_LOG_LEVEL": "INFO"}
