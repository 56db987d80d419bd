from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.optimize import _models

Builder = Callable[[Path], tuple[Path, Any]]

BUILDERS: dict[str, Builder] = {
    "sklearn_logreg": lambda path: _models.make_sklearn(path, "logreg"),
    "sklearn_random_forest": lambda path: _models.make_sklearn(path, "random_forest"),
    "sklearn_rf_regressor": lambda path: _models.make_sklearn(path, "rf_regressor"),
    "sklearn_pipeline": lambda path: _models.make_sklearn(path, "pipeline"),
    "sklearn_custom_step": lambda path: _models.make_sklearn(path, "custom"),
    "xgboost": _models.make_xgboost,
    "lightgbm": _models.make_lightgbm,
    "pytorch": _models.make_pytorch,
}


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Any]]:
    """Builds each example model once per session: (model directory, held-out inputs)."""
    built: dict[str, tuple[Path, Any]] = {}

    def build(name: str) -> tuple[Path, Any]:
        if name not in built:
            built[name] = BUILDERS[name](tmp_path_factory.mktemp("models") / name)
        return built[name]

    return build
