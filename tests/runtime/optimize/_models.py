"""Small MLflow models of every convertible flavor, built locally with fixed seeds (nothing downloaded).

``AddOne`` is a transformer no converter knows; it lives in an importable module so that the model
unpickles in the replica processes the tests start.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

N_FEATURES = 6
COLUMNS = [f"x{index}" for index in range(N_FEATURES)]


class AddOne(TransformerMixin, BaseEstimator):
    """A custom pipeline step: skl2onnx has no converter for it."""

    def fit(self, features: Any, labels: Any = None) -> AddOne:
        return self

    def transform(self, features: Any) -> Any:
        return np.asarray(features, dtype=np.float64) + 1.0


def dataset(rows: int = 700, *, seed: int = 7, classes: int = 2) -> tuple[pd.DataFrame, np.ndarray[Any, Any]]:
    """Features as a data frame with columns x0..x5 and labels (0..classes-1) or targets."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((rows, N_FEATURES)) * np.array([1.0, 2.0, 0.5, 10.0, 1.0, 3.0])
    score = features @ rng.standard_normal(N_FEATURES) + 0.3 * rng.standard_normal(rows)
    if classes == 0:
        return pd.DataFrame(features, columns=COLUMNS), score
    edges = np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1])
    return pd.DataFrame(features, columns=COLUMNS), np.searchsorted(edges, score).astype(np.int64)


def split(rows: int = 700, **kwargs: Any) -> tuple[pd.DataFrame, Any, pd.DataFrame]:
    """(training features, training labels, held-out features)."""
    features, labels = dataset(rows, **kwargs)
    return features.iloc[:500], labels[:500], features.iloc[500:].reset_index(drop=True)


_PACKAGES = {"sklearn": "scikit-learn", "xgboost": "xgboost", "lightgbm": "lightgbm", "pytorch": "torch"}


def save(model: Any, path: Path, flavor: str, example: Any, **kwargs: Any) -> Path:
    import mlflow

    module = getattr(mlflow, flavor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Naming the requirements skips MLflow's slow inference of them in a subprocess.
        module.save_model(
            model, str(path), input_example=example, pip_requirements=[_PACKAGES[flavor]], **kwargs
        )
    return path


def sklearn_model(kind: str) -> tuple[Any, pd.DataFrame]:
    """A fitted scikit-learn model and its held-out features."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "rf_regressor":
        features, targets = dataset(classes=0)
        model = RandomForestRegressor(n_estimators=20, max_depth=6, random_state=0).fit(
            features[:500], targets[:500]
        )
        return model, features.iloc[500:].reset_index(drop=True)
    train, labels, held_out = split(classes=3 if kind == "pipeline" else 2)
    if kind == "logreg":
        model = LogisticRegression(max_iter=500).fit(train, labels)
    elif kind == "random_forest":
        model = RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0).fit(train, labels)
    elif kind == "pipeline":
        # String labels: the served answer must keep them (and their dtype) exactly.
        names = np.array(["bronze", "gold", "silver"])
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(train, names[labels])
    elif kind == "custom":
        model = make_pipeline(AddOne(), StandardScaler(), LogisticRegression(max_iter=500)).fit(train, labels)
    else:
        raise ValueError(kind)
    return model, held_out


def make_sklearn(path: Path, kind: str) -> tuple[Path, pd.DataFrame]:
    model, held_out = sklearn_model(kind)
    # Pickled (not skops) so that the custom step and the trees load without a trusted-types list.
    return save(model, path, "sklearn", held_out.head(4), serialization_format="cloudpickle"), held_out


def make_xgboost(path: Path) -> tuple[Path, pd.DataFrame]:
    import xgboost

    train, labels, held_out = split(classes=3)
    model = xgboost.XGBClassifier(n_estimators=15, max_depth=3, random_state=0).fit(train, labels)
    return save(model, path, "xgboost", held_out.head(4)), held_out


def make_lightgbm(path: Path) -> tuple[Path, pd.DataFrame]:
    import lightgbm

    features, targets = dataset(classes=0)
    model = lightgbm.LGBMRegressor(n_estimators=15, num_leaves=8, random_state=0, verbose=-1)
    model.fit(features[:500], targets[:500])
    return save(model, path, "lightgbm", features.head(4)), features.iloc[500:].reset_index(drop=True)


def make_pytorch(path: Path) -> tuple[Path, np.ndarray[Any, Any]]:
    import torch

    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Linear(N_FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3), torch.nn.Softmax(dim=1)
    ).eval()
    features = dataset()[0].to_numpy(dtype=np.float32)
    save(network, path, "pytorch", features[:4], serialization_format="pickle")
    return path, features[500:]
