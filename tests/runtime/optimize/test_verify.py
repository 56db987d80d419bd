"""The comparison rules: labels exactly, values within rtol against a small-value floor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest

from runtime.optimize.verify import compare_answers, compare_arrays


@dataclass(frozen=True)
class Case:
    id: str
    native: Any
    converted: Any
    ok: bool
    reason: str = ""  # a fragment of the reason when not ok


F = np.float64
CASES = [
    Case("equal labels", np.array([0, 1, 1]), np.array([0, 1, 1]), True),
    Case(
        "one label differs",
        np.array([0, 1, 1]),
        np.array([0, 0, 1]),
        False,
        "labels differ on 1 of 3 rows (row 1",
    ),
    Case("string labels", np.array(["a", "b"]), np.array(["a", "b"]), True),
    Case("label dtype differs", np.array([0, 1]), np.array([0, 1], dtype=np.int32), False, "dtype differs"),
    Case("shape differs", np.array([[0.5], [0.5]]), np.array([0.5, 0.5]), False, "shape differs"),
    Case("within rtol", np.array([100.0, 1.0]), np.array([100.0005, 1.000005]), True),
    Case(
        "beyond rtol", np.array([100.0, 1.0]), np.array([100.01, 1.0]), False, "beyond rtol=1e-05 on 1 of 2"
    ),
    # 2e-7 away from 0 in an output whose scale is 1: measured against 0.1, within 1e-5.
    Case("float32 noise near zero", np.array([0.0, 1.0]), np.array([2e-7, 1.0]), True),
    Case(
        "real error near zero",
        np.array([0.0, 1.0]),
        np.array([1e-5, 1.0]),
        False,
        "max relative difference 1.00e-04",
    ),
    Case("NaN in the same place", np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), True),
    Case("NaN where a number was", np.array([0.5, 1.0]), np.array([np.nan, 1.0]), False, "NaN where"),
    Case("same infinities", np.array([np.inf, -np.inf, 1.0]), np.array([np.inf, -np.inf, 1.0]), True),
    Case(
        "flipped infinity", np.array([np.inf, 1.0]), np.array([-np.inf, 1.0]), False, "infinite values differ"
    ),
    Case(
        "2-D row reported",
        np.array([[0.5, 0.5], [0.2, 0.8]]),
        np.array([[0.5, 0.5], [0.3, 0.7]]),
        False,
        "on 1 of 2 rows",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_compare_arrays(case: Case) -> None:
    result = compare_arrays(case.native, case.converted, rtol=1e-5, what="answers")
    assert result.ok is case.ok, result.reason
    if not case.ok:
        assert case.reason in result.reason
        assert result.reason.startswith("answers: ")


def test_scores_may_differ_in_dtype_when_asked() -> None:
    native, converted = np.array([0.25, 0.75]), np.array([0.25, 0.75], dtype=np.float32)
    assert not compare_arrays(native, converted, rtol=1e-5, what="scores").ok
    assert compare_arrays(native, converted, rtol=1e-5, what="scores", check_dtype=False).ok


def test_frames_compare_columns_index_dtypes_and_values() -> None:
    native = pd.DataFrame(np.array([[0.1, 0.9]], dtype=np.float32))
    assert compare_answers(native, native.copy(), rtol=1e-5).ok
    renamed = native.rename(columns={0: "a"})
    assert "columns differ" in compare_answers(native, renamed, rtol=1e-5).reason
    assert "column dtypes differ" in compare_answers(native, native.astype(np.float64), rtol=1e-5).reason
    assert (
        "native returns DataFrame, onnx ndarray"
        in compare_answers(native, native.to_numpy(), rtol=1e-5).reason
    )
    shifted = native.copy()
    shifted.index = [5]
    assert "row index differs" in compare_answers(native, shifted, rtol=1e-5).reason


def test_a_native_answer_no_graph_can_give_is_a_mismatch() -> None:
    result = compare_answers([0, 1], np.array([0, 1]), rtol=1e-5)
    assert not result.ok and "not an array" in result.reason
