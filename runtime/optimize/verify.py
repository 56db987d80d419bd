"""Comparing a converted graph's answers with the native model's: pure functions over arrays.

Labels (integers, strings, booleans) must be equal exactly. Scores and values must agree within
``rtol`` relative to the native value, where a native value smaller than a tenth of the output's largest
magnitude is measured against that tenth instead: a probability of 1e-12 against 3e-12 is the same
answer, and float32 arithmetic is only ever exact to about 1e-7 of the output's scale (a float32 forest
answers 1.2e-7 for a probability of 0), which a purely relative test would call a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.types import Array

# Below this fraction of an output's largest magnitude, differences are measured against the fraction.
SMALL_VALUE_FRACTION = 0.1


@dataclass(frozen=True, slots=True)
class Comparison:
    ok: bool
    reason: str  # empty when ok
    max_rel_error: float = 0.0


def compare_answers(native: Any, converted: Any, *, rtol: float, what: str = "answers") -> Comparison:
    """Compare two answers as served (numpy arrays or pandas DataFrames): type, shape, dtype, values."""
    native_is_frame = _is_frame(native)
    if native_is_frame != _is_frame(converted) or (
        not native_is_frame and not isinstance(converted, np.ndarray)
    ):
        return Comparison(
            False, f"{what}: native returns {type(native).__name__}, onnx {type(converted).__name__}"
        )
    if native_is_frame:
        if list(native.columns) != list(converted.columns):
            return Comparison(
                False,
                f"{what}: columns differ: native {list(native.columns)}, onnx {list(converted.columns)}",
            )
        if not native.index.equals(converted.index):
            return Comparison(False, f"{what}: row index differs")
        native_dtypes, converted_dtypes = list(native.dtypes), list(converted.dtypes)
        if native_dtypes != converted_dtypes:
            return Comparison(
                False, f"{what}: column dtypes differ: native {native_dtypes}, onnx {converted_dtypes}"
            )
        return compare_arrays(native.to_numpy(), converted.to_numpy(), rtol=rtol, what=what)
    if not isinstance(native, np.ndarray):
        return Comparison(False, f"{what}: the native model returns {type(native).__name__}, not an array")
    return compare_arrays(native, converted, rtol=rtol, what=what)


def compare_arrays(
    native: Array, converted: Array, *, rtol: float, what: str, check_dtype: bool = True
) -> Comparison:
    if native.shape != converted.shape:
        return Comparison(False, f"{what}: shape differs: native {native.shape}, onnx {converted.shape}")
    if check_dtype and native.dtype != converted.dtype:
        return Comparison(False, f"{what}: dtype differs: native {native.dtype}, onnx {converted.dtype}")
    if native.dtype.kind not in "fc":
        equal = np.asarray(native == converted, dtype=bool)
        if bool(equal.all()):
            return Comparison(True, "")
        bad_rows = _bad_rows(~equal)
        first = int(bad_rows[0])
        return Comparison(
            False,
            f"{what}: labels differ on {len(bad_rows)} of {len(native)} rows "
            f"(row {first}: native {native[first]!r}, onnx {converted[first]!r})",
        )
    return _compare_floats(native.astype(np.float64), converted.astype(np.float64), rtol=rtol, what=what)


def _compare_floats(native: Array, converted: Array, *, rtol: float, what: str) -> Comparison:
    native_nan, converted_nan = np.isnan(native), np.isnan(converted)
    if not np.array_equal(native_nan, converted_nan):
        row = int(_bad_rows(native_nan != converted_nan)[0])
        return Comparison(False, f"{what}: NaN where the other has a number (row {row})")
    finite = np.isfinite(native) & np.isfinite(converted)
    # Infinities (and NaN, checked above) must sit in the same places with the same sign.
    if not np.array_equal(
        np.where(finite | native_nan, 0.0, native), np.where(finite | converted_nan, 0.0, converted)
    ):
        row = int(_bad_rows(~finite & ~native_nan & (native != converted))[0])
        return Comparison(False, f"{what}: infinite values differ (row {row})")
    if not finite.any():
        return Comparison(True, "")
    native, converted = np.where(finite, native, 0.0), np.where(finite, converted, 0.0)
    magnitude = np.abs(native)
    floor = max(float(magnitude.max()) * SMALL_VALUE_FRACTION, np.finfo(np.float64).tiny)
    relative = np.abs(converted - native) / np.maximum(magnitude, floor)
    max_rel_error = float(relative.max())
    if max_rel_error <= rtol:
        return Comparison(True, "", max_rel_error)
    bad_rows = _bad_rows(relative > rtol)
    worst = np.unravel_index(int(relative.argmax()), relative.shape)
    return Comparison(
        False,
        f"{what}: values differ beyond rtol={rtol:g} on {len(bad_rows)} of {len(native)} rows "
        f"(max relative difference {max_rel_error:.2e} at row {int(worst[0])}: "
        f"native {native[worst]!r}, onnx {converted[worst]!r})",
        max_rel_error,
    )


def _bad_rows(mask: Array) -> Array:
    """Row numbers where a (possibly multi-column) mask holds anywhere."""
    if mask.ndim > 1:
        return np.flatnonzero(np.asarray(mask.reshape(mask.shape[0], -1).any(axis=1)))
    return np.flatnonzero(mask)


def _is_frame(value: Any) -> bool:
    # Checked by name so that this module never imports pandas itself.
    return type(value).__name__ == "DataFrame" and hasattr(value, "columns")
