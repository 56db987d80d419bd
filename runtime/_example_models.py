"""The custom ``mlflow.pyfunc`` example models (see ``runtime.examples``).

They live in an importable module of their own because MLflow pickles them by reference: loading
such a model imports this module, and with it mlflow, which ``runtime.examples`` itself avoids.
"""

from __future__ import annotations

import warnings
from typing import Any

from runtime.loaders._imports import quiet_import

_PythonModel: Any = quiet_import("mlflow.pyfunc").PythonModel


# MLflow 3 warns, when a PythonModel subclass is defined, that predict has no type hints. These models
# take DataFrames checked against their signatures (type hints would change how MLflow converts
# inputs), and a warning at import time would fail every importer that treats warnings as errors.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)

    class ScaledSumModel(_PythonModel):
        """``score = scale * (x + 2 y)`` with a ``scale`` param (default 1.0)."""

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            scale = float((params or {}).get("scale", 1.0))
            return (scale * (model_input["x"] + 2.0 * model_input["y"])).to_numpy()

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

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            import pandas as pd

            features = model_input[list(self.columns)].astype("float64").to_numpy()
            return pd.DataFrame({"probability": self.pipeline.predict_proba(features)[:, 1]})
