"""BentoML serving a scikit-learn model saved with joblib: the BentoML peer of the benchmarks.

Runs inside the BentoML virtualenv that ``benchmarks._peers`` makes (never in zeroserve's environment: the
pins conflict), through BentoML's own CLI, from this folder:

    ZEROSERVE_BENCH_MODEL_FILE=model.joblib VENV/bin/bentoml serve _bentoml_peer:SklearnForest --port 8080

It is the service BentoML's documentation shows for a scikit-learn model: a ``@bentoml.service`` class that
loads the estimator once and one ``@bentoml.api`` method that calls ``predict`` on the rows it is given
(``POST /predict`` with ``{"instances": [[...], ...]}``; the answer is the JSON list of labels). One worker
process, as every server in the table gets one, and no access-log line per request (no server measured
writes one).
"""

from __future__ import annotations

import os

import bentoml
import joblib
import numpy as np


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class SklearnForest:
    def __init__(self) -> None:
        self.estimator = joblib.load(os.environ["ZEROSERVE_BENCH_MODEL_FILE"])

    @bentoml.api
    def predict(self, instances: np.ndarray) -> np.ndarray:
        result: np.ndarray = self.estimator.predict(instances)
        return result
