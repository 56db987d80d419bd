"""Models trained on ``pd.DataFrame(X)``: their MLflow signature names the columns 0, 1, 2 (integers),
and pandas' ``to_dict(orient="split")`` sends them as integers. Served as MLflow serves them (checked
against mlflow's own scoring functions when this was written): integer labels in ``dataframe_split``
and rows in ``inputs``/``instances`` work. zeroserve also takes the labels' text ("0"), which is the
only way ``dataframe_records`` can name them (JSON keys are strings) and which MLflow refuses."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from runtime.loaders._mlmodel import _input_schema
from runtime.types import ColumnSchema
from tests.runtime.conftest import ReplicaProcess

pytestmark = pytest.mark.slow

ROWS = [[0.5, -1.0, 2.0, 0.1], [-0.7, 0.3, -0.2, 1.5]]


def make_model(directory: Path, *, signature: bool) -> tuple[Path, list[int]]:
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame(np.random.default_rng(3).standard_normal((200, 4)))  # columns 0, 1, 2, 3
    labels = (frame[0] + frame[2] > 0).astype(int)
    model = LogisticRegression().fit(frame, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inferred = infer_signature(frame, model.predict(frame)) if signature else None
        mlflow.sklearn.save_model(model, str(directory), signature=inferred)
    return directory, [int(value) for value in model.predict(pd.DataFrame(ROWS))]


def test_a_signature_keeps_integer_names() -> None:
    schema, _ = _input_schema([{"type": "double", "name": 0}, {"type": "double", "name": 1},
                               {"type": "double"}])
    assert isinstance(schema, ColumnSchema)
    assert [(c.name, c.label) for c in schema.columns] == [("0", 0), ("1", 1), ("2", None)]


@pytest.mark.parametrize("optimization", ["off", "auto"])
def test_every_input_form_reaches_a_model_with_integer_columns(
    tmp_path: Path, start_replica: Callable[..., ReplicaProcess], optimization: str
) -> None:
    model, expected = make_model(tmp_path / "model", signature=True)
    replica = start_replica("--model-uri", str(model), "--optimization", optimization)
    bodies: list[dict[str, Any]] = [
        {"dataframe_split": {"columns": [0, 1, 2, 3], "data": ROWS}},  # pandas' to_dict("split")
        {"dataframe_split": {"columns": ["0", "1", "2", "3"], "data": ROWS}},
        {"dataframe_records": [{str(i): value for i, value in enumerate(row)} for row in ROWS]},
        {"inputs": ROWS},
        {"instances": ROWS},
    ]
    for body in bodies:
        answer = httpx.post(f"{replica.url}/invocations", json=body, timeout=30)
        assert answer.status_code == 200, (body, answer.text)
        assert answer.json()["predictions"] == expected, body
    three = {"dataframe_split": {"columns": [0, 1, 2], "data": [row[:3] for row in ROWS]}}
    missing = httpx.post(f"{replica.url}/invocations", timeout=30, json=three)
    assert missing.status_code == 400 and "missing column '3'" in missing.text


def test_integer_labels_reach_a_model_without_a_signature(
    tmp_path: Path, start_replica: Callable[..., ReplicaProcess]
) -> None:
    model, expected = make_model(tmp_path / "model", signature=False)
    replica = start_replica("--model-uri", str(model), "--optimization", "off")
    answer = httpx.post(f"{replica.url}/invocations", timeout=30,
                        json={"dataframe_split": {"columns": [0, 1, 2, 3], "data": ROWS}})
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == expected
    bad = httpx.post(f"{replica.url}/invocations", timeout=30,
                     json={"dataframe_split": {"columns": [0, True, 2, 3], "data": ROWS}})
    assert bad.status_code == 400 and "strings or integers" in bad.text
