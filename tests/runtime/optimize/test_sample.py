"""The verification sample: deterministic, scaled by the example, edge values in every column."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.optimize._mlmodel import NotConvertible
from runtime.optimize.sample import EDGE_COUNT, RANDOM_ROWS, column_sample, tensor_sample
from runtime.types import ColumnSchema, ColumnSpec, TensorSchema, TensorSpec


def spec(name: str, type_name: str, dtype: str, required: bool = True) -> ColumnSpec:
    return ColumnSpec(name, np.dtype(dtype), type_name, required)


SCHEMA = ColumnSchema(
    (
        spec("amount", "double", "float64"),
        spec("count", "long", "int64"),
        spec("flag", "boolean", "bool"),
        spec("city", "string", "O"),
        spec("score", "double", "float64", required=False),
    )
)
EXAMPLE = {
    "amount": np.array([100.0, 250.0, 400.0]),
    "count": np.array([3, 7, 12]),
    "flag": np.array([True, False, True]),
    "city": np.array(["Oslo", "Lima", "Pune"], dtype=object),
    "score": np.array([0.2, 0.4, 0.9]),
}


def test_columns_have_signature_dtypes_and_equal_lengths_with_the_example_first() -> None:
    sample = column_sample(SCHEMA, EXAMPLE)
    lengths = {len(values) for values in sample.values()}
    assert len(lengths) == 1 and lengths.pop() > RANDOM_ROWS
    for column in SCHEMA.columns:
        assert sample[column.name].dtype == column.dtype
        np.testing.assert_array_equal(sample[column.name][:3], EXAMPLE[column.name])


def test_edges_are_included_and_scaled_by_the_example() -> None:
    amount = column_sample(SCHEMA, EXAMPLE)["amount"]
    for edge in (0.0, 1.0, -1.0, 100.0, 400.0, 1e-9):
        assert edge in amount
    assert amount.max() > 400.0 * 5 and amount.min() < -400.0 * 5  # far outside the example's range
    counts = column_sample(SCHEMA, EXAMPLE)["count"]
    assert {0, 1, 3, 12, 2, 13}.issubset(set(counts.tolist()))


def test_nan_only_in_optional_columns() -> None:
    sample = column_sample(SCHEMA, EXAMPLE)
    assert not np.isnan(sample["amount"]).any()
    assert np.isnan(sample["score"]).any()


def test_strings_come_from_the_example_only() -> None:
    assert set(column_sample(SCHEMA, EXAMPLE)["city"]) == {"Oslo", "Lima", "Pune"}
    with pytest.raises(NotConvertible, match="string column 'city' has no values"):
        column_sample(SCHEMA, None)


def test_the_sample_is_the_same_in_every_process() -> None:
    first, second = column_sample(SCHEMA, EXAMPLE), column_sample(SCHEMA, EXAMPLE)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_tensor_sample_without_example() -> None:
    schema = TensorSchema((TensorSpec("x", np.dtype(np.float32), (-1, 2, 3)),))
    sample = tensor_sample(schema, None)["x"]
    assert sample.dtype == np.float32 and sample.shape[1:] == (2, 3)
    assert sample.shape[0] == RANDOM_ROWS + 64 + 2 * EDGE_COUNT
    assert (sample.reshape(len(sample), -1) == 0.0).all(axis=1).any()  # an all-zero row
    with pytest.raises(NotConvertible, match="no fixed feature shape"):
        tensor_sample(TensorSchema((TensorSpec("x", np.dtype(np.float32), (-1, -1)),)), None)
