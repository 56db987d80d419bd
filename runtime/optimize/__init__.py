"""Automatic optimization: serve an MLflow model as a verified ONNX graph, falling back to the native flavor.

``optimize_model`` converts (scikit-learn, XGBoost, LightGBM, PyTorch), verifies the graph against the
native model, caches the decision in the warm cache and says which path to serve and why;
``OnnxAdapter`` serves the graph behind the MLflow protocol with exactly the native answers.
"""

from runtime.optimize.adapter import OnnxAdapter, OptimizedModel, open_session
from runtime.optimize.optimizer import optimize_model
from runtime.optimize.types import (
    OPTIMIZATION_MODES,
    AdapterSpec,
    FeedSpec,
    OptimizationMode,
    OptimizationPath,
    OptimizationResult,
    OutputSpec,
    Verification,
)

__all__ = [
    "OPTIMIZATION_MODES",
    "AdapterSpec",
    "FeedSpec",
    "OnnxAdapter",
    "OptimizationMode",
    "OptimizationPath",
    "OptimizationResult",
    "OptimizedModel",
    "OutputSpec",
    "Verification",
    "open_session",
    "optimize_model",
]
