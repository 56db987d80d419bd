from __future__ import annotations

import numpy as np
import orjson
import pytest

from runtime.errors import InvalidInput, UnsupportedMediaType
from runtime.protocol import mlflow
from runtime.types import Layout, Prediction


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON;charset=UTF-8", "text/csv"],
)
def test_accepted_content_types(content_type: str) -> None:
    assert mlflow.media_type(content_type) in ("application/json", "text/csv")


@pytest.mark.parametrize(
    "content_type",
    [None, "", "text/plain", "application/x-www-form-urlencoded", "application/json; format=pandas-split",
     "application/json; charset=latin-1"],
)  # fmt: skip
def test_other_content_types_are_415(content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType) as error:
        mlflow.media_type(content_type)
    assert error.value.status_code == 415


def test_each_input_format_decodes() -> None:
    split = mlflow.decode(b'{"dataframe_split": {"columns": ["a"], "data": [[1]]}}', "application/json")
    assert split.split == (["a"], [[1]])
    records = mlflow.decode(b'{"dataframe_records": [{"a": 1}, {"a": 2}]}', "application/json")
    assert records.named == {"a": [1, 2]} and records.from_records
    instances = mlflow.decode(b'{"instances": [[1, 2]], "params": {"k": 1}}', "application/json")
    assert instances.unnamed == [[1, 2]] and instances.params == {"k": 1}
    inputs = mlflow.decode(b'{"inputs": {"x": [1]}}', "application/json")
    assert inputs.named == {"x": [1]}
    nan = mlflow.decode(b'{"inputs": [[NaN, 1]]}', "application/json")  # as Python's json writes NaN
    assert np.isnan(nan.unnamed[0][0])


def test_csv_decodes_to_text_cells_with_missing_values() -> None:
    payload = mlflow.decode(b"a,b\n1,x\n,y\n", "text/csv")
    assert payload.split == (["a", "b"], [["1", "x"], [None, "y"]]) and payload.text_cells


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "body is empty"),
        (b"   ", "body is empty"),
        (b"{not json", "malformed JSON"),
        # Deeper than orjson goes (and Python's json would recurse past its limit): 400, not 500.
        (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested deeper than 1024 levels"),
        (b'{"inputs": ' + b"[" * 1030 + b"1" + b"]" * 1030 + b"}", "nested deeper than 1024 levels"),
        (b"[1, 2]", "expected a JSON object"),
        (b"{}", "got none"),
        (b'{"inputs": [1], "instances": [1]}', "got \\['instances', 'inputs'\\]"),
        (b'{"data": [1]}', "unknown key\\(s\\) \\['data'\\]"),
        (b'{"inputs": [1], "params": [1]}', "params must be an object"),
        (b'{"dataframe_split": [[1]]}', "dataframe_split must be an object"),
        (b'{"dataframe_split": {"data": []}}', "non-empty list of rows"),
        (b'{"dataframe_split": {"columns": ["a", "a"], "data": [[1, 2]]}}', "duplicate names"),
        (b'{"dataframe_records": {}}', "non-empty list of objects"),
        (b'{"dataframe_records": [1]}', "record 0 is a int"),
        (b'{"inputs": []}', "inputs is empty"),
        (b'{"inputs": {}}', "empty object"),
    ],
)
def test_malformed_bodies_are_400(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        mlflow.decode(body, "application/json")


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"a,b\n", "header but no rows"), (b"a,b\n1\n", "row 1 has 1 cells"), (b"\xff\xfe", "not UTF-8")],
)
def test_malformed_csv_is_400(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        mlflow.decode(body, "text/csv")


def test_predictions_follow_the_layout() -> None:
    single = Prediction({"y": np.array([1.5, 2.5], dtype=np.float32)}, Layout.SINGLE)
    assert orjson.loads(mlflow.encode(single)) == {"predictions": [1.5, 2.5]}
    columns = Prediction({"label": np.array([1]), "probabilities": np.array([[0.25, 0.75]])}, Layout.COLUMNS)
    assert orjson.loads(mlflow.encode(columns)) == {
        "predictions": {"label": [1], "probabilities": [[0.25, 0.75]]}
    }
    records = Prediction(
        {"p": np.array([0.5, 0.25]), "c": np.array(["a", "b"], dtype=object)}, Layout.RECORDS
    )
    assert orjson.loads(mlflow.encode(records)) == {
        "predictions": [{"p": 0.5, "c": "a"}, {"p": 0.25, "c": "b"}]
    }


def test_unusual_outputs_still_serialize() -> None:
    strided = np.arange(6.0).reshape(2, 3)[:, 1]  # not C-contiguous
    boxed = np.empty(1, dtype=object)
    boxed[0] = {"k": np.float32(1.5)}
    prediction = Prediction({"a": strided, "b": boxed, "c": np.array([b"raw"], dtype=object)}, Layout.COLUMNS)
    assert orjson.loads(mlflow.encode(prediction))["predictions"] == {
        "a": [1.0, 4.0],
        "b": [{"k": 1.5}],
        "c": ["raw"],
    }


def test_the_nesting_limit_does_not_depend_on_the_recursion_limit() -> None:
    # Any library may raise the process's recursion limit; Python's json would then parse a body that
    # orjson refused for its depth. It is refused all the same.
    import sys

    from runtime.errors import InvalidInput
    from runtime.protocol.mlflow import loads

    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        with pytest.raises(InvalidInput, match="nested deeper than 1024 levels"):
            loads(b'{"inputs": ' + b"[" * 1100 + b"1" + b"]" * 1100 + b"}")
    finally:
        sys.setrecursionlimit(previous)
