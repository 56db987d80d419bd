"""KServe's Python model server on a scikit-learn model saved with joblib: the KServe peer of the benchmarks.

Runs inside the KServe virtualenv that ``benchmarks._peers`` makes (never in zeroserve's environment: the
pins conflict), as a plain script:

    VENV/bin/python benchmarks/_kserve_peer.py --model_file model.joblib --model_name sklearn-model \
        --http_port 8080 --enable_grpc false

It serves the V1 protocol (``POST /v1/models/{name}:predict`` with ``{"instances": [[...], ...]}``) the
way a KServe custom predictor does: a ``kserve.Model`` whose ``load`` reads the estimator and whose
``predict`` calls it. KServe's own flags (ports, gRPC, workers, logging) pass through unchanged.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import joblib
import kserve
import numpy as np


class SklearnModel(kserve.Model):
    def __init__(self, name: str, model_file: str) -> None:
        super().__init__(name)
        self.model_file = model_file
        self.estimator: Any = None

    def load(self) -> bool:
        self.estimator = joblib.load(self.model_file)
        self.ready = True
        return self.ready

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        # Synchronous on purpose, as KServe's own sklearn server: a fast estimator call costs less than a
        # hop to a thread.
        instances = np.asarray(payload["instances"], dtype=np.float64)
        return {"predictions": self.estimator.predict(instances).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_file", required=True, help="a scikit-learn estimator saved with joblib")
    args, _ = parser.parse_known_args()
    model = SklearnModel(args.model_name, args.model_file)
    model.load()
    server = kserve.ModelServer()
    # No server in the benchmarks writes a line per request (zeroserve, the floor, MLServer with debug off).
    # KServe writes two: uvicorn's access line, and the trace line of the timing middleware its REST server
    # always installs (the timing itself still runs; only its printing is silenced).
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("kserve.trace").disabled = True
    server.start([model])


if __name__ == "__main__":
    main()
