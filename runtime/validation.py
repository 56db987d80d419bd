"""Inputs meet the model's schema: decoded payloads become validated, typed ``Tensors``.

Every problem is an ``InvalidInput`` (400) that names the input or column and says what was expected,
so that bad input never reaches the model (and never becomes a 500).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.errors import InvalidInput
from runtime.payload import Payload
from runtime.types import Array, ColumnSchema, ColumnSpec, InputSchema, Tensors, TensorSchema, TensorSpec

# ``rows`` returned for a request whose inputs share no batch dimension: it is never merged with others.
UNBATCHABLE = -1

_TRUE_STRINGS = frozenset({"true", "1", "t", "yes"})
_FALSE_STRINGS = frozenset({"false", "0", "f", "no"})


def conform(payload: Payload, schema: InputSchema, *, allow_nan: bool) -> tuple[Tensors, int]:
    """Validate ``payload`` against ``schema``; return the tensors and their common number of rows."""
    if isinstance(schema, TensorSchema):
        return _conform_tensors(payload, schema, allow_nan)
    if isinstance(schema, ColumnSchema):
        return _conform_columns(payload, schema, allow_nan)
    return _conform_free(payload, allow_nan)


# -- element conversion --------------------------------------------------------------------------


def to_array(
    value: Any, dtype: np.dtype[Any] | None, what: str, *, allow_nan: bool, allow_missing: bool = False
) -> Array:
    """Convert JSON-decoded (or already numpy) ``value`` to ``dtype`` without silent loss.

    ``allow_missing``: nulls are accepted (an optional column); for floats they become NaN.
    """
    try:
        if dtype is None:
            array = _infer(value)
        elif dtype.kind == "f":
            # A number beyond the type's range (1e39 for float32) is refused, not turned into inf.
            with np.errstate(over="raise"):
                array = np.asarray(value, dtype=dtype)
        elif dtype.kind in "iu":
            array = _to_integer(value, dtype, what)
        elif dtype.kind == "b":
            array = _to_bool(value, what)
        elif dtype.kind == "O":
            array = _to_strings(value, allow_missing)
        else:
            array = np.asarray(value, dtype=dtype)
    except FloatingPointError:
        assert dtype is not None
        raise InvalidInput(f"{what}: a number is out of range for {dtype.name}") from None
    except (ValueError, TypeError, OverflowError) as exc:
        expected = "numbers or strings" if dtype is None else "strings" if dtype.kind == "O" else dtype.name
        raise InvalidInput(f"{what}: {_first_line(exc)} (expected {expected})") from exc
    if array.dtype.kind == "f" and not (allow_nan or allow_missing) and array.size:
        # The sum is NaN or infinite exactly when an element is (barring overflow, checked exactly).
        total = float(array.sum())
        if not math.isfinite(total) and not np.isfinite(array).all():
            raise InvalidInput(
                f"{what}: contains NaN, infinite or missing (null) values, which are not allowed"
            )
    return array


def _infer(value: Any) -> Array:
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype.kind == "U":
        return array.astype(object)
    if array.dtype.kind == "O" and array.ndim and any(isinstance(item, list) for item in array.flat):
        raise ValueError("rows have different lengths (a ragged array)")
    return array


def _to_integer(value: Any, dtype: np.dtype[Any], what: str) -> Array:
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    kind = array.dtype.kind
    if kind in "fiub" and array.size:
        if kind == "f":
            if not np.isfinite(array).all():
                raise ValueError("contains NaN, infinite or missing (null) values")
            if (array != np.trunc(array)).any():
                raise ValueError("contains non-integer numbers")
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise ValueError(f"values out of range for {dtype.name}")
        return array.astype(dtype, copy=False)
    if kind in "fiub":
        return array.astype(dtype)
    if kind in "US":
        try:
            return array.astype(dtype)  # CSV cells and numeric strings
        except ValueError:
            bad = next((str(item) for item in array.flat if not _integer_text(str(item))), None)
            if bad is None:  # numpy refused what int() reads: its own message, still a 400
                raise
            raise ValueError(f"got the text {bad!r}, not an integer") from None
    if kind == "O" and any(item is None for item in array.flat):
        raise ValueError("contains missing (null) values")
    if kind == "O":
        huge = next((item for item in array.flat
                     if isinstance(item, int) and not isinstance(item, bool)), None)
        if huge is not None:
            # np.asarray keeps integers beyond 64 bits as Python objects.
            raise ValueError(f"a {len(str(abs(huge)))}-digit integer is out of range for {dtype.name}")
    raise ValueError(f"got {_describe_kind(array)}")


def _integer_text(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _to_bool(value: Any, what: str) -> Array:
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    kind = array.dtype.kind
    if kind == "b":
        return array
    if kind in "iu" and np.isin(array, (0, 1)).all():
        return array.astype(np.bool_)
    if kind in "US":
        lowered = np.char.lower(array.astype(str))
        truthy = np.isin(lowered, list(_TRUE_STRINGS))
        if not (truthy | np.isin(lowered, list(_FALSE_STRINGS))).all():
            raise ValueError("contains strings that are not true/false")
        return truthy
    raise ValueError(f"got {_describe_kind(array)}")


def _to_strings(value: Any, allow_missing: bool) -> Array:
    array = np.asarray(value, dtype=object)
    for item in array.flat:
        if not isinstance(item, str | bytes) and not (item is None and allow_missing):
            kind = "missing (null) values" if item is None else f"a {type(item).__name__}"
            raise ValueError(f"contains {kind}, expected strings")
    return array


def _describe_kind(array: Array) -> str:
    return {"f": "numbers", "U": "strings", "S": "bytes", "O": "mixed or missing values"}.get(
        array.dtype.kind, array.dtype.name
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).split("\n", 1)[0]
    if "inhomogeneous" in text or "sequence" in text:
        return "rows have different lengths or nest differently (not a rectangular array)"
    return text


# -- tensor models (ONNX, PyTorch, MLflow tensor signatures) ---------------------------------------


def _conform_tensors(payload: Payload, schema: TensorSchema, allow_nan: bool) -> tuple[Tensors, int]:
    specs = schema.inputs
    values = _assign_tensors(payload, specs)
    tensors: Tensors = {}
    for spec in specs:
        if spec.name not in values:
            raise InvalidInput(f"missing input {spec.describe()}; the model's inputs: {_names(specs)}")
        what = f"input {spec.name!r}"
        array = to_array(values[spec.name], spec.dtype, what, allow_nan=allow_nan)
        tensors[spec.name] = _check_shape(array, spec, what)
    batched = all(spec.shape and spec.shape[0] == -1 for spec in specs)
    return tensors, _common_rows(tensors) if batched else UNBATCHABLE


def _assign_tensors(payload: Payload, specs: Sequence[TensorSpec]) -> dict[str, Any]:
    single = specs[0].name if len(specs) == 1 else None
    if payload.unnamed is not None:
        if single is None:
            raise InvalidInput(f"the model has {len(specs)} inputs; pass them by name: {_names(specs)}")
        return {single: payload.unnamed}
    if payload.split is not None:
        columns, rows = payload.split
        if single is not None:
            return {single: rows}
        if columns is None:
            raise InvalidInput(f"the model has {len(specs)} inputs; name the columns: {_names(specs)}")
        named = _transpose(columns, rows, "dataframe_split")
        return {name: _as_column(named[name], spec) for spec in specs if (name := spec.name) in named}
    named = payload.named or {}
    if single is not None and single not in named and payload.from_records:
        # Records of feature columns for a single matrix input: each record is one row.
        return {single: [list(row) for row in zip(*named.values(), strict=True)]}
    unknown = [name for name in named if name not in {spec.name for spec in specs}]
    if unknown:
        raise InvalidInput(f"unknown input(s) {unknown}; the model's inputs: {_names(specs)}")
    if payload.from_records:
        return {spec.name: _as_column(named[spec.name], spec) for spec in specs if spec.name in named}
    return named


def _as_column(values: list[Any], spec: TensorSpec) -> Any:
    # A per-column input of shape [-1, 1] (ONNX models converted from a DataFrame) gets one value per row.
    if spec.shape is not None and len(spec.shape) == 2 and spec.shape[1] == 1:
        return [[value] for value in values]
    return values


def _check_shape(array: Array, spec: TensorSpec, what: str) -> Array:
    expected = spec.shape
    if expected is None:
        return array
    if array.ndim != len(expected) or any(
        want not in (-1, got) for want, got in zip(expected, array.shape, strict=True)
    ):
        hint = ""
        if array.ndim == len(expected) - 1 and expected[0] == -1:
            hint = "; a single row must still be wrapped in a list"
        raise InvalidInput(f"{what} expects shape {list(expected)}, got {list(array.shape)}{hint}")
    return array


def _common_rows(tensors: Tensors) -> int:
    rows = {name: array.shape[0] for name, array in tensors.items()}
    counts = set(rows.values())
    if len(counts) != 1:
        raise InvalidInput(f"inputs have different numbers of rows: {rows}")
    return counts.pop()


def _names(specs: Sequence[TensorSpec]) -> list[str]:
    return [spec.name for spec in specs]


# -- column models (MLflow DataFrame signatures) ----------------------------------------------------


def _conform_columns(payload: Payload, schema: ColumnSchema, allow_nan: bool) -> tuple[Tensors, int]:
    specs = schema.columns
    if payload.split is not None:
        columns, rows = payload.split
        block = _uniform_block(columns, rows, specs, allow_nan)
        if block is not None:
            return block
        named = _transpose(columns if columns is not None else _positional(rows, specs), rows, "data")
    elif payload.named is not None:
        named = payload.named
    else:
        rows_only = payload.unnamed
        if isinstance(rows_only, list) and rows_only and isinstance(rows_only[0], list):
            # Rows of values in column order (``inputs``/``instances`` as a list of lists).
            block = _uniform_block(None, rows_only, specs, allow_nan, what="input rows")
            if block is not None:
                return block
        named = _unnamed_columns(rows_only, specs)
    tensors: Tensors = {}
    for spec in specs:
        if spec.name not in named:
            if spec.required:
                raise InvalidInput(
                    f"missing column {spec.name!r} ({spec.type_name}); the model's columns: "
                    f"{[column.name for column in specs]}"
                )
            continue
        what = f"column {spec.name!r}"
        array = to_array(
            named[spec.name], spec.dtype, what, allow_nan=allow_nan, allow_missing=not spec.required
        )
        if array.ndim == 0:
            array = array.reshape(1)
        elif array.ndim != 1:
            # A list where one value is expected ([41], or [] for "age"): MLflow refuses it too.
            held = "an empty list" if array.shape[-1] == 0 else f"a list of {array.shape[-1]}"
            raise InvalidInput(f"column {spec.name!r} expects one {spec.type_name} value per row, got {held}")
        tensors[spec.name] = array
    return tensors, _common_rows(tensors)


def _uniform_block(
    columns: list[str] | None,
    rows: list[Any],
    specs: Sequence[ColumnSpec],
    allow_nan: bool,
    *,
    what: str = "data",
) -> tuple[Tensors, int] | None:
    """Fast path: every column is the same float type (typical for feature vectors), convert at once."""
    dtype = specs[0].dtype
    if dtype.kind != "f" or any(spec.dtype != dtype or not spec.required for spec in specs):
        return None
    names = columns if columns is not None else [spec.name for spec in specs]
    try:
        block = np.asarray(rows, dtype=dtype)
    except (ValueError, TypeError):
        return None  # the per-column path names the offending column
    if block.ndim != 2 or block.shape[1] != len(names):
        return None
    index = {name: position for position, name in enumerate(names)}
    if any(spec.name not in index for spec in specs):
        return None
    to_array(block, dtype, what, allow_nan=allow_nan)  # NaN check for the whole block at once
    return {spec.name: block[:, index[spec.name]] for spec in specs}, block.shape[0]


def _positional(rows: list[Any], specs: Sequence[ColumnSpec]) -> list[str]:
    width = len(rows[0]) if rows and isinstance(rows[0], list) else 0
    if width != len(specs):
        raise InvalidInput(
            f"rows without column names must have one value per model column {[s.name for s in specs]}, "
            f"got {width}"
        )
    return [spec.name for spec in specs]


def _unnamed_columns(value: Any, specs: Sequence[ColumnSpec]) -> dict[str, Any]:
    if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
        from runtime.payload import records_to_named

        return records_to_named(value, "instances")
    if isinstance(value, list) and value and all(isinstance(row, list) for row in value):
        return _transpose([spec.name for spec in specs], value, "inputs")
    raise InvalidInput(
        "the model takes named columns "
        f"{[spec.name for spec in specs]}: send dataframe_split, dataframe_records, or inputs as an object"
    )


def _transpose(columns: list[str], rows: list[Any], what: str) -> dict[str, list[Any]]:
    width = len(columns)
    for index, row in enumerate(rows):
        if not isinstance(row, list | tuple) or len(row) != width:
            size = len(row) if isinstance(row, list | tuple) else type(row).__name__
            raise InvalidInput(f"{what}: row {index} has {size} values, expected {width} (one per column)")
    if not rows:
        return {name: [] for name in columns}
    return {name: list(values) for name, values in zip(columns, zip(*rows, strict=True), strict=True)}


# -- models without a signature ----------------------------------------------------------------------


def _conform_free(payload: Payload, allow_nan: bool) -> tuple[Tensors, int]:
    if payload.split is not None:
        columns, rows = payload.split
        if columns is None:
            width = len(rows[0]) if rows and isinstance(rows[0], list) else 0
            columns = [str(position) for position in range(width)]
        named: dict[str, Any] = _transpose(columns, rows, "data")
        if payload.text_cells:
            named = {name: _parse_numbers(values) for name, values in named.items()}
    elif payload.named is not None:
        named = payload.named
    else:
        named = {"": payload.unnamed}
    tensors = {
        name: to_array(value, None, f"input {name!r}" if name else "inputs", allow_nan=allow_nan)
        for name, value in named.items()
    }
    leading = {array.shape[0] if array.ndim else -1 for array in tensors.values()}
    rows_count = leading.pop() if len(leading) == 1 else UNBATCHABLE
    return tensors, rows_count if rows_count >= 0 else UNBATCHABLE


def _parse_numbers(column: list[Any]) -> list[Any]:
    """CSV cells of an untyped model: a column of numbers becomes numbers, as pandas would read it."""
    for parse in (int, float):
        try:
            return [parse(cell) if cell is not None else None for cell in column]
        except ValueError:
            continue
    return column
