"""The custom ``mlflow.pyfunc`` example models (see ``runtime.examples``).

They live in an importable module of their own because MLflow pickles them by reference: loading
such a model imports this module, and with it mlflow, which ``runtime.examples`` itself avoids.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from runtime.loaders._imports import quiet_import

_PythonModel: Any = quiet_import("mlflow.pyfunc").PythonModel

# ``model_input: pd.DataFrame``: MLflow 3 warns, when a PythonModel subclass is defined, if predict has
# no type hint for its input (inside its own warning filter, so a caller cannot silence it). A DataFrame
# hint is one MLflow infers no schema from: inputs are still converted and checked by the signature
# saved with the model, exactly as without a hint.


class ScaledSumModel(_PythonModel):
    """``score = scale * (x + 2 y)`` with a ``scale`` param (default 1.0)."""

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray[Any, Any]:
        scale = float((params or {}).get("scale", 1.0))
        result: np.ndarray[Any, Any] = (scale * (model_input["x"] + 2.0 * model_input["y"])).to_numpy()
        return result


class PropensityModel(_PythonModel):
    """The probability that a customer buys in the next 30 days, from a scikit-learn pipeline."""

    columns = (
        "age",
        "tenure_months",
        "num_purchases",
        "avg_basket",
        "days_since_last_visit",
        "is_member",
    )

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        features = model_input[list(self.columns)].astype("float64").to_numpy()
        return pd.DataFrame({"probability": self.pipeline.predict_proba(features)[:, 1]})
