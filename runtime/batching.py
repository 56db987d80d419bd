"""Pure merge/split for adaptive batching: no I/O, no clocks, no asyncio.

Requests can share a model call when their inputs have the same names, dtypes and trailing
dimensions (the ``batch_key``); merging concatenates along the leading (batch) dimension and
splitting hands each request the rows that came from it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from runtime.types import Prediction, Tensors

BatchKey = Hashable


def batch_key(inputs: Tensors) -> BatchKey:
    return tuple((name, array.dtype.str, array.shape[1:]) for name, array in inputs.items())


def plan(rows: Sequence[int], keys: Sequence[BatchKey], max_rows: int) -> list[list[int]]:
    """Group request indices (in arrival order) into batches of one key and at most ``max_rows`` rows.

    A request larger than ``max_rows`` forms a batch of its own rather than being refused. Each
    request goes to the oldest open batch of its key that still has room, so order within a key is kept.

    >>> plan([1, 1, 1], ["a", "b", "a"], max_rows=8)
    [[0, 2], [1]]
    >>> plan([3, 3, 3], ["a", "a", "a"], max_rows=4)
    [[0], [1], [2]]
    """
    batches: list[list[int]] = []
    open_batch: dict[BatchKey, tuple[int, int]] = {}  # key -> (batch position, rows in it)
    for index, (size, key) in enumerate(zip(rows, keys, strict=True)):
        current = open_batch.get(key)
        if current is not None and current[1] + size <= max_rows:
            batches[current[0]].append(index)
            open_batch[key] = (current[0], current[1] + size)
        else:
            open_batch[key] = (len(batches), size)
            batches.append([index])
    return batches


def merge(parts: Sequence[Tensors]) -> Tensors:
    """One model input from several requests' inputs (all of one ``batch_key``)."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def split(prediction: Prediction, rows: Sequence[int]) -> list[Prediction]:
    """Cut a batched prediction back into one per request (views, no copies).

    Raises ``ValueError`` when an output does not have one row per input row: such a model cannot
    be batched, and the caller must run requests one by one.
    """
    if len(rows) == 1:
        return [prediction]
    total = sum(rows)
    for name, output in prediction.outputs.items():
        if output.ndim == 0 or output.shape[0] != total:
            shape = list(output.shape)
            raise ValueError(f"output {name!r} has shape {shape}, not one row per input row ({total})")
    parts: list[Prediction] = []
    start = 0
    for size in rows:
        end = start + size
        parts.append(
            Prediction(
                {name: output[start:end] for name, output in prediction.outputs.items()}, prediction.layout
            )
        )
        start = end
    return parts
