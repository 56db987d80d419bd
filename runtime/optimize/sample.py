"""The verification sample: rows a converted graph must answer exactly as the native model does.

Generated from the model's signature, scaled by its input example when there is one, with edge values
(zero, plus and minus one, each column's extremes and values far outside them, tiny magnitudes) placed
so that every column meets every edge value both alone and together with the others. Values the
replica would reject (NaN or infinity in a required column) are never generated: a graph only has to
agree with the native model on requests the replica accepts. The generator is seeded, so every machine
verifies a given model on the same rows.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from runtime.optimize._mlmodel import NotConvertible
from runtime.types import Array, ColumnSchema, ColumnSpec, TensorSchema

RANDOM_ROWS = 256
MIXED_EDGE_ROWS = 64
SEED = 20240607
EDGE_COUNT = 8  # edge values per numeric column, see _numeric_values


def column_sample(
    schema: ColumnSchema, example: dict[str, Array] | None, *, seed: int = SEED
) -> dict[str, Array]:
    """Columns (1-D arrays in each column's signature dtype) of the verification sample."""
    rng = np.random.default_rng(seed)
    columns: dict[str, Array] = {}
    for spec in schema.columns:
        values = None if example is None else example.get(spec.name)
        generated = _column_values(spec, values, rng)
        columns[spec.name] = (
            generated if values is None else np.concatenate([values.astype(spec.dtype), generated])
        )
    return columns


def tensor_sample(
    schema: TensorSchema, example: dict[str, Array] | None, *, seed: int = SEED
) -> dict[str, Array]:
    rng = np.random.default_rng(seed)
    tensors: dict[str, Array] = {}
    for spec in schema.inputs:
        if spec.shape is None or any(dim < 0 for dim in spec.shape[1:]) or spec.dtype is None:
            raise NotConvertible(f"input tensor {spec.describe()} has no fixed feature shape to sample")
        values = None if example is None else example.get(spec.name)
        features = int(np.prod(spec.shape[1:], dtype=np.int64))
        flat_example = None if values is None else values.reshape(len(values), features)
        columns = [
            _numeric_values(spec.dtype, None if flat_example is None else flat_example[:, index], index, rng)
            for index in range(features)
        ]
        generated = np.stack(columns, axis=1).reshape((-1, *spec.shape[1:])).astype(spec.dtype)
        tensors[spec.name] = (
            generated if values is None else np.concatenate([values.astype(spec.dtype), generated])
        )
    return tensors


def _column_values(spec: ColumnSpec, example: Array | None, rng: np.random.Generator) -> Array:
    kind = spec.dtype.kind
    if kind == "b":
        return rng.integers(0, 2, _total_rows(), dtype=np.int64).astype(bool)
    if kind in "OUS":
        if spec.type_name != "string":
            raise NotConvertible(f"input column {spec.name!r} of type {spec.type_name!r} cannot be sampled")
        if example is None or len(example) == 0:
            raise NotConvertible(
                f"string column {spec.name!r} has no values in the input example to verify with"
            )
        choices = np.unique(example.astype(str))
        return np.asarray(rng.choice(choices, _total_rows()), dtype=object)
    if kind not in "iuf":
        raise NotConvertible(f"input column {spec.name!r} of type {spec.type_name!r} cannot be sampled")
    values = _numeric_values(spec.dtype, example, zlib.crc32(spec.name.encode()), rng)
    if not spec.required and kind == "f":
        # An optional column may be sent as null, which the replica passes on as NaN.
        values[rng.random(len(values)) < 0.05] = np.nan
    return values


def _total_rows() -> int:
    return RANDOM_ROWS + MIXED_EDGE_ROWS + 2 * EDGE_COUNT


def _numeric_values(
    dtype: np.dtype[Any], example: Array | None, position: int, rng: np.random.Generator
) -> Array:
    """RANDOM_ROWS random values, then edge rows: rotated (row k holds edge k + position), uniform
    (row k holds edge k in every column), and mixed (random rows with about a third of the columns at
    an edge). ``position`` offsets the rotation so that neighbouring columns hold different edges."""
    finite = None if example is None else example[np.isfinite(example.astype(np.float64))]
    if finite is not None and len(finite):
        low, high = float(finite.min()), float(finite.max())
        center = float(finite.mean())
        spread = float(finite.std()) or abs(high - low) or max(abs(center), 1.0)
    else:
        low, high, center, spread = -1.0, 1.0, 0.0, 1.0
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low_int, high_int = (int(low), int(high)) if finite is not None and len(finite) else (0, 10)
        int_edges = [0, 1, low_int, high_int, low_int - 1, high_int + 1, (low_int + high_int) // 2, 2]
        edges: list[float] = [float(np.clip(edge, info.min, info.max)) for edge in int_edges]
        random = rng.integers(min(low_int, high_int), max(low_int, high_int) + 1, RANDOM_ROWS)
    else:
        far = 10.0 * max(spread, abs(center), 1.0)
        edges = [0.0, 1.0, -1.0, low, high, center + far, center - far, 1e-9]
        random = center + spread * rng.standard_normal(RANDOM_ROWS) * rng.choice([0.5, 1.0, 3.0], RANDOM_ROWS)
    rotated = [edges[(row + position) % EDGE_COUNT] for row in range(EDGE_COUNT)]
    mixed = np.where(
        rng.random(MIXED_EDGE_ROWS) < 0.33,
        rng.choice(np.asarray(edges, dtype=np.float64), MIXED_EDGE_ROWS),
        center + spread * rng.standard_normal(MIXED_EDGE_ROWS),
    )
    combined = np.concatenate([np.asarray(random, dtype=np.float64), rotated, edges, mixed])
    if dtype.kind in "iu":
        combined = np.round(combined)
    return combined.astype(dtype)
