from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from runtime.batching import batch_key, merge, plan, split
from runtime.types import Layout, Prediction


@dataclass(frozen=True)
class PlanCase:
    id: str
    rows: list[int]
    keys: list[str]
    max_rows: int
    expected: list[list[int]]


PLAN_CASES = [
    PlanCase("one request", [1], ["a"], 8, [[0]]),
    PlanCase("all fit", [1, 2, 3], ["a", "a", "a"], 8, [[0, 1, 2]]),
    PlanCase("exactly full", [4, 4], ["a", "a"], 8, [[0, 1]]),
    PlanCase("overflow starts a new batch", [4, 4, 1], ["a", "a", "a"], 8, [[0, 1], [2]]),
    PlanCase("keys never mix", [1, 1, 1, 1], ["a", "b", "a", "b"], 8, [[0, 2], [1, 3]]),
    PlanCase("oversized request runs alone", [20, 1], ["a", "a"], 8, [[0], [1]]),
    PlanCase("no merging when max is 0", [1, 1], ["a", "a"], 0, [[0], [1]]),
    PlanCase("order within a key is kept", [3, 3, 3], ["a", "a", "a"], 4, [[0], [1], [2]]),
]


@pytest.mark.parametrize("case", PLAN_CASES, ids=lambda case: case.id)
def test_plan(case: PlanCase) -> None:
    assert plan(case.rows, case.keys, case.max_rows) == case.expected


def test_batch_key_separates_dtypes_and_trailing_shapes() -> None:
    base = batch_key({"x": np.zeros((2, 4), np.float32)})
    assert batch_key({"x": np.zeros((5, 4), np.float32)}) == base  # rows do not matter
    assert batch_key({"x": np.zeros((2, 4), np.float64)}) != base
    assert batch_key({"x": np.zeros((2, 3), np.float32)}) != base
    assert batch_key({"y": np.zeros((2, 4), np.float32)}) != base


def test_merge_then_split_round_trips() -> None:
    parts = [{"x": np.full((rows, 2), float(rows))} for rows in (1, 3, 2)]
    merged = merge(parts)
    assert merged["x"].shape == (6, 2)
    prediction = Prediction({"y": merged["x"][:, 0] * 10}, Layout.SINGLE)
    pieces = split(prediction, [1, 3, 2])
    assert [piece.outputs["y"].tolist() for piece in pieces] == [[10.0], [30.0] * 3, [20.0] * 2]
    assert all(piece.layout is Layout.SINGLE for piece in pieces)


def test_merge_of_one_is_not_copied() -> None:
    inputs = {"x": np.zeros((1, 2))}
    assert merge([inputs]) is inputs


def test_split_refuses_outputs_without_a_row_per_input_row() -> None:
    with pytest.raises(ValueError, match="not one row per input row"):
        split(Prediction({"total": np.array(3.0)}, Layout.SINGLE), [1, 2])
    with pytest.raises(ValueError, match="'y' has shape \\[2\\]"):
        split(Prediction({"y": np.zeros(2)}, Layout.SINGLE), [1, 2])


def test_split_of_one_request_needs_no_row_dimension() -> None:
    prediction = Prediction({"total": np.array(3.0)}, Layout.SINGLE)
    assert split(prediction, [5]) == [prediction]
