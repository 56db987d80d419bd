"""Validation of decoded payloads against tensor and column schemas."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from runtime.errors import InvalidInput
from runtime.payload import Payload
from runtime.types import ColumnSchema, ColumnSpec, TensorSchema, TensorSpec
from runtime.validation import UNBATCHABLE, conform

MATRIX = TensorSchema((TensorSpec("float_input", np.dtype(np.float32), (-1, 3)),))
TWO_INPUTS = TensorSchema(
    (TensorSpec("ids", np.dtype(np.int64), (-1, 1)), TensorSpec("weights", np.dtype(np.float32), (-1, 1)))
)
FIXED = TensorSchema((TensorSpec("image", np.dtype(np.float32), (2, 2)),))
COLUMNS = ColumnSchema(
    (
        ColumnSpec("age", np.dtype(np.int64), "long"),
        ColumnSpec("income", np.dtype(np.float64), "double"),
        ColumnSpec("member", np.dtype(np.bool_), "boolean"),
        ColumnSpec("city", np.dtype(object), "string"),
        ColumnSpec("note", np.dtype(object), "string", required=False),
    )
)
FLOATS = ColumnSchema(tuple(ColumnSpec(f"f{index}", np.dtype(np.float64), "double") for index in range(3)))


def test_unnamed_matrix_for_a_single_input() -> None:
    tensors, rows = conform(Payload(unnamed=[[1, 2, 3], [4, 5, 6]]), MATRIX, allow_nan=False)
    assert rows == 2
    assert tensors["float_input"].dtype == np.float32
    assert tensors["float_input"].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_dataframe_rows_feed_a_single_matrix_input() -> None:
    tensors, rows = conform(Payload(split=(["a", "b", "c"], [[1, 2, 3]])), MATRIX, allow_nan=False)
    assert rows == 1 and tensors["float_input"].shape == (1, 3)


def test_records_feed_a_single_matrix_input() -> None:
    named = {"a": [1, 4], "b": [2, 5], "c": [3, 6]}
    tensors, _rows = conform(Payload(named=named, from_records=True), MATRIX, allow_nan=False)
    assert tensors["float_input"].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_per_column_inputs_get_a_trailing_dimension() -> None:
    payload = Payload(split=(["weights", "ids"], [[0.5, 7], [1.5, 8]]))
    tensors, _rows = conform(payload, TWO_INPUTS, allow_nan=False)
    assert tensors["ids"].tolist() == [[7], [8]] and tensors["ids"].dtype == np.int64
    assert tensors["weights"].shape == (2, 1)


def test_fixed_shape_inputs_are_not_batchable() -> None:
    _, rows = conform(Payload(unnamed=[[1, 2], [3, 4]]), FIXED, allow_nan=False)
    assert rows == UNBATCHABLE


def test_columns_from_split_records_and_objects() -> None:
    row = [35, 50000.5, True, "Paris", None]
    names = ["age", "income", "member", "city", "note"]
    from_split, rows = conform(Payload(split=(names, [row, row])), COLUMNS, allow_nan=False)
    assert rows == 2
    assert from_split["age"].dtype == np.int64 and from_split["member"].dtype == np.bool_
    from_object, rows = conform(Payload(named=dict(zip(names, row, strict=True))), COLUMNS, allow_nan=False)
    assert rows == 1 and from_object["city"].tolist() == ["Paris"]


def test_missing_optional_column_is_fine_and_extra_columns_are_ignored() -> None:
    named = {"age": [1], "income": [2.0], "member": [False], "city": ["x"], "unused": [0]}
    tensors, _ = conform(Payload(named=named), COLUMNS, allow_nan=False)
    assert "note" not in tensors and "unused" not in tensors


def test_uniform_float_columns_take_the_block_path_in_any_column_order() -> None:
    tensors, _rows = conform(Payload(split=(["f2", "f0", "f1"], [[3.0, 1.0, 2.0]])), FLOATS, allow_nan=False)
    assert [tensors[name].tolist() for name in ("f0", "f1", "f2")] == [[1.0], [2.0], [3.0]]


def test_unnamed_rows_of_uniform_floats_take_the_block_path_in_column_order() -> None:
    rows = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    tensors, count = conform(Payload(unnamed=rows), FLOATS, allow_nan=False)
    assert count == 2
    assert [tensors[name].tolist() for name in ("f0", "f1", "f2")] == [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]
    # One conversion for the whole request: every column is a view of the same block.
    assert tensors["f0"].base is not None and tensors["f0"].base is tensors["f2"].base
    with pytest.raises(InvalidInput, match="input rows: contains NaN"):
        conform(Payload(unnamed=[[1.0, None, 3.0]]), FLOATS, allow_nan=False)
    # What the block cannot take gets the per-column path's answers.
    with pytest.raises(InvalidInput, match="row 0 has 2 values, expected 3"):
        conform(Payload(unnamed=[[1.0, 2.0]]), FLOATS, allow_nan=False)
    with pytest.raises(InvalidInput, match="column 'f1'"):
        conform(Payload(unnamed=[[1.0, "x", 3.0]]), FLOATS, allow_nan=False)


def test_csv_text_cells_are_converted_by_the_schema() -> None:
    names = ["age", "income", "member", "city"]
    tensors, _ = conform(
        Payload(split=(names, [["35", "1.5", "true", "Oslo"]]), text_cells=True), COLUMNS, allow_nan=False
    )
    assert tensors["age"].tolist() == [35] and tensors["member"].tolist() == [True]


def test_models_without_a_schema_infer_types() -> None:
    tensors, rows = conform(Payload(split=(["a", "b"], [[1, "x"], [2, "y"]])), None, allow_nan=False)
    assert rows == 2 and tensors["a"].dtype.kind == "i" and tensors["b"].dtype == object
    tensors, rows = conform(Payload(unnamed=[[1.0, 2.0]]), None, allow_nan=False)
    assert set(tensors) == {""} and rows == 1
    tensors, _ = conform(Payload(split=(["a"], [["1"], ["2"]]), text_cells=True), None, allow_nan=False)
    assert tensors["a"].tolist() == [1, 2]


BAD: list[tuple[str, Payload, Any, str]] = [
    ("wrong trailing dimension", Payload(unnamed=[[1, 2]]), MATRIX, r"expects shape \[-1, 3\], got \[1, 2\]"),
    ("a bare row", Payload(unnamed=[1, 2, 3]), MATRIX, "single row must still be wrapped in a list"),
    ("ragged rows", Payload(unnamed=[[1, 2, 3], [4]]), MATRIX, "not a rectangular array"),
    ("text in a float input", Payload(unnamed=[["a", 2, 3]]), MATRIX, "could not convert string to float"),
    ("NaN", Payload(unnamed=[[1, None, 3]]), MATRIX, "NaN, infinite or missing"),
    ("infinity", Payload(unnamed=[[1, float("inf"), 3]]), MATRIX, "NaN, infinite or missing"),
    ("unknown input", Payload(named={"pixels": [[1, 2, 3]]}), MATRIX, "unknown input.*'pixels'"),
    ("unnamed for two inputs", Payload(unnamed=[[1, 2]]), TWO_INPUTS, "pass them by name"),
    ("missing input", Payload(named={"ids": [[1]]}), TWO_INPUTS, "missing input 'weights'"),
    (
        "fraction in an int input",
        Payload(named={"ids": [[1.5]], "weights": [[1]]}),
        TWO_INPUTS,
        "non-integer",
    ),
    (
        "rows disagree",
        Payload(named={"ids": [[1], [2]], "weights": [[1]]}),
        TWO_INPUTS,
        "different numbers of rows",
    ),
    ("missing column", Payload(named={"age": [1]}), COLUMNS, "missing column 'income'"),
    (
        "null in an int column",
        Payload(split=(["age", "income", "member", "city"], [[None, 1.0, True, "x"]])),
        COLUMNS,
        "column 'age'.*missing",
    ),
    (
        "number in a string column",
        Payload(split=(["age", "income", "member", "city"], [[1, 1.0, True, 5]])),
        COLUMNS,
        "column 'city'.*expected strings",
    ),
    (
        "not a boolean",
        Payload(split=(["age", "income", "member", "city"], [[1, 1.0, 7, "x"]])),
        COLUMNS,
        "column 'member'",
    ),
    ("short row", Payload(split=(["age", "income"], [[1]])), COLUMNS, "row 0 has 1 values, expected 2"),
    ("NaN in a required float column", Payload(split=(None, [[1.0, float("nan"), 2.0]])), FLOATS, "NaN"),
    (
        "positional rows of the wrong width",
        Payload(split=(None, [[1.0, 2.0]])),
        FLOATS,
        "one value per model column",
    ),
    ("a bare list for a column model", Payload(unnamed=[1, 2]), COLUMNS, "takes named columns"),
]


@pytest.mark.parametrize(
    ("payload", "schema", "message"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_bad_input_is_a_400_naming_the_problem(payload: Payload, schema: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as error:
        conform(payload, schema, allow_nan=False)
    assert error.value.status_code == 400


def test_nan_is_accepted_when_allowed_or_the_column_is_optional() -> None:
    conform(Payload(unnamed=[[1, None, 3]]), MATRIX, allow_nan=True)
    optional = ColumnSchema((ColumnSpec("x", np.dtype(np.float64), "double", required=False),))
    tensors, _ = conform(Payload(named={"x": [None, 1.0]}), optional, allow_nan=False)
    assert np.isnan(tensors["x"][0])


GOOD_RECORD = {"age": 41, "income": 52000.0, "member": True, "city": "Lyon"}


@pytest.mark.parametrize(
    ("age", "message"),
    [
        ([41], "column 'age' expects one long value per row, got a list of 1"),  # MLflow refuses it too
        ([], "column 'age' expects one long value per row, got an empty list"),
        ("forty", "column 'age': got the text 'forty', not an integer"),
        (int("9" * 400), "column 'age': a 400-digit integer is out of range for int64"),
    ],
    ids=["one-element-list", "empty-list", "text", "400-digit-integer"],
)
def test_a_wrong_value_is_named_in_the_users_terms(age: Any, message: str) -> None:
    payload = Payload(named={key: [value] for key, value in {**GOOD_RECORD, "age": age}.items()})
    with pytest.raises(InvalidInput) as refused:
        conform(payload, COLUMNS, allow_nan=False)
    assert refused.value.message.startswith(message), refused.value.message
    assert "np.str_" not in refused.value.message and "mixed or missing" not in refused.value.message
