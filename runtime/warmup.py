"""Warm-up: a replica is ready only after one real inference ran.

The warm-up also measures what the replica needs to know about its model: whether its outputs follow
its inputs' rows (then requests can be batched) and how long one call takes (then it is run inline or
on a worker thread).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.batching import merge
from runtime.errors import ModelLoadError, ZeroserveError
from runtime.loaders.base import LoadedModel
from runtime.payload import Payload
from runtime.protocol import mlflow as mlflow_protocol
from runtime.types import Array, ColumnSchema, InputSchema, Tensors, TensorSchema
from runtime.validation import UNBATCHABLE

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WarmUp:
    ran: bool
    batchable: bool
    call_seconds: float  # one warm call's duration; 0 when no warm-up ran
    source: str  # "input example", "schema" or why none ran


def warm_up(model: LoadedModel) -> WarmUp:
    payload, source = _warm_up_payload(model)
    if payload is None:
        logger.warning("no warm-up for %r: %s", model, source)
        return WarmUp(ran=False, batchable=False, call_seconds=0.0, source=source)
    try:
        inputs, rows = model.conform(payload, allow_nan=True)
        first = model.predict(inputs)
        batchable = False
        if rows != UNBATCHABLE and first.rows() == rows:
            # Two copies of the example in one call must give two copies' worth of rows.
            doubled = model.predict(merge([inputs, inputs]))
            batchable = doubled.rows() == 2 * rows
        seconds = _fastest_call(model, inputs)
    except (ZeroserveError, ValueError, TypeError) as exc:
        message = exc.message if isinstance(exc, ZeroserveError) else str(exc)
        if source == "input example":
            raise ModelLoadError(f"the model fails on its own input example: {message}") from exc
        logger.warning("warm-up on inputs made from the schema failed (%s); serving anyway", message)
        return WarmUp(ran=True, batchable=False, call_seconds=0.0, source=source)
    return WarmUp(ran=True, batchable=batchable, call_seconds=seconds, source=source)


# The execution mode is chosen from one call's duration. On a busy machine a single call can be
# preempted and look ten times slower than it is, so the fastest of a few calls counts; the calls stop
# once they have taken this long in all, so a slow model is still timed once.
_TIMED_CALLS = 5
_TIMING_BUDGET_S = 0.02


def _fastest_call(model: LoadedModel, inputs: Tensors) -> float:
    fastest = spent = 0.0
    for call in range(_TIMED_CALLS):
        started = time.perf_counter()
        model.predict(inputs)
        seconds = time.perf_counter() - started
        fastest = seconds if call == 0 else min(fastest, seconds)
        spent += seconds
        if spent > _TIMING_BUDGET_S:
            break
    return fastest


def _warm_up_payload(model: LoadedModel) -> tuple[Payload | None, str]:
    if model.example is not None:
        try:
            return mlflow_protocol.decode_document(model.example), "input example"
        except ZeroserveError as exc:
            logger.warning("ignoring the model's input example: %s", exc.message)
    payload = synthesize(model.input_schema)
    if payload is None:
        return None, "the model has no input example and no complete input schema"
    return payload, "schema"


def synthesize(schema: InputSchema) -> Payload | None:
    """One row of zeros (empty strings, false) shaped like the schema, or None when it is incomplete."""
    if isinstance(schema, ColumnSchema):
        return Payload(named={column.name: _zeros(column.dtype, (1,)) for column in schema.columns})
    if isinstance(schema, TensorSchema):
        named: dict[str, Any] = {}
        for spec in schema.inputs:
            if spec.shape is None:
                return None
            shape = tuple(1 if dim == -1 else dim for dim in spec.shape)
            named[spec.name] = _zeros(spec.dtype or np.dtype(np.float32), shape)
        return Payload(named=named)
    return None


def _zeros(dtype: np.dtype[Any], shape: tuple[int, ...]) -> Array:
    if dtype.kind == "O":
        array = np.empty(shape, dtype=object)
        array.fill("")
        return array
    return np.zeros(shape, dtype=dtype)
