"""The MLflow scoring protocol: ``POST /invocations`` bodies in, ``{"predictions": ...}`` out."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np
import orjson

from runtime.errors import InvalidInput, UnsupportedMediaType
from runtime.payload import Payload, records_to_named
from runtime.types import Layout, Prediction

INPUT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_ALLOWED_KEYS = frozenset((*INPUT_KEYS, "params"))
_JSON = "application/json"
_CSV = "text/csv"


def media_type(content_type: str | None) -> str:
    """The request's media type; 415 unless it is JSON or CSV with at most a UTF-8 charset."""
    if not content_type:
        raise UnsupportedMediaType(f"missing Content-Type; use {_JSON} or {_CSV}")
    kind, _, parameters = content_type.partition(";")
    kind = kind.strip().lower()
    if kind not in (_JSON, _CSV):
        raise UnsupportedMediaType(f"unsupported Content-Type {kind!r}; use {_JSON} or {_CSV}")
    for parameter in parameters.split(";"):
        name, _, value = parameter.strip().partition("=")
        if not name:
            continue
        if name.lower() != "charset" or value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(f"unsupported Content-Type parameter {parameter.strip()!r}")
    return kind


# orjson refuses deeper documents; Python's json would recurse until RecursionError. No model input is
# nested anywhere near this deep: a body that is, is refused as such (400), never a 500.
MAX_JSON_NESTING = 1024


def loads(body: bytes) -> Any:
    """Parse JSON; NaN and Infinity literals (which MLflow's clients may send) take a slower path."""
    if not body.strip():
        raise InvalidInput("the request body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as fast_error:
        # orjson stops at its documented depth limit (1024) with this error; the fallback parser must
        # not be given the document then: how deep Python's json gets depends on the process's recursion
        # limit, which any library may have raised (seen in the test suite: a 1,100-deep body parsed).
        if str(fast_error).startswith("depth limit exceeded"):
            raise InvalidInput(f"the JSON body is nested deeper than {MAX_JSON_NESTING} levels") from None
        try:
            return json.loads(body)
        except RecursionError:
            raise InvalidInput(f"the JSON body is nested deeper than {MAX_JSON_NESTING} levels") from None
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput(f"malformed JSON: {fast_error}") from None


def decode(body: bytes, content_type: str | None) -> Payload:
    kind = media_type(content_type)
    if kind == _CSV:
        return decode_csv(body)
    document = loads(body)
    if not isinstance(document, dict):
        raise InvalidInput(
            f"expected a JSON object with one of {list(INPUT_KEYS)}, got a {type(document).__name__}"
        )
    return decode_document(document)


def decode_document(document: dict[str, Any]) -> Payload:
    present = [key for key in INPUT_KEYS if key in document]
    unknown = [key for key in document if key not in _ALLOWED_KEYS]
    if unknown:
        raise InvalidInput(f"unknown key(s) {unknown}; expected exactly one of {list(INPUT_KEYS)} (+ params)")
    if len(present) != 1:
        found = f"got {present}" if present else "got none"
        raise InvalidInput(f"expected exactly one of {list(INPUT_KEYS)}, {found}")
    params = document.get("params")
    if params is not None and not isinstance(params, dict):
        raise InvalidInput(f"params must be an object, got a {type(params).__name__}")
    key = present[0]
    value = document[key]
    if key == "dataframe_split":
        return Payload(split=_split(value), params=params)
    if key == "dataframe_records":
        if not isinstance(value, list) or not value:
            raise InvalidInput("dataframe_records must be a non-empty list of objects")
        return Payload(named=records_to_named(value, key), params=params, from_records=True)
    if isinstance(value, dict):
        if not value:
            raise InvalidInput(f"{key} is an empty object")
        return Payload(named=value, params=params)
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        # Row objects ({"instances": [{"a": 1, "b": 2}, ...]}), as TensorFlow Serving clients send.
        return Payload(named=records_to_named(value, key), params=params, from_records=True)
    if value is None or (isinstance(value, list) and not value):
        raise InvalidInput(f"{key} is empty")
    return Payload(unnamed=value, params=params)


def _split(value: Any) -> tuple[list[str] | None, list[Any]]:
    if not isinstance(value, dict):
        raise InvalidInput(
            f'dataframe_split must be an object like {{"columns": [...], "data": [[...]]}}, '
            f"got a {type(value).__name__}"
        )
    unknown = [key for key in value if key not in ("columns", "data", "index")]
    if unknown:
        raise InvalidInput(f"dataframe_split: unknown key(s) {unknown}; expected columns and data")
    data = value.get("data")
    if not isinstance(data, list) or not data:
        raise InvalidInput("dataframe_split.data must be a non-empty list of rows")
    columns = value.get("columns")
    # Integer labels are what pandas' default to_dict(orient="split") writes, and MLflow takes them: a
    # column is named by its text from here on ("0"), as JSON object keys (dataframe_records) name it.
    if columns is not None and (
        not isinstance(columns, list)
        or not all(isinstance(name, str) or (isinstance(name, int) and not isinstance(name, bool))
                   for name in columns)
    ):
        raise InvalidInput("dataframe_split.columns must be a list of column names (strings or integers)")
    names = [str(name) for name in columns] if columns is not None else None
    if names is not None and len(set(names)) != len(names):
        raise InvalidInput(f"dataframe_split.columns has duplicate names: {columns}")
    return names, data


def decode_csv(body: bytes) -> Payload:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"CSV body is not UTF-8: {exc}") from None
    try:
        # newline="": the csv module reads \r\n, \n and a bare \r itself (as the csv docs require).
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    except csv.Error as exc:  # a NUL byte, a quote left open at the end, ...
        raise InvalidInput(f"the CSV body cannot be read: {exc}") from None
    if not rows:
        raise InvalidInput("the request body is empty")
    header, data = rows[0], rows[1:]
    if not data:
        raise InvalidInput("CSV has a header but no rows")
    width = len(header)
    for index, row in enumerate(data):
        if len(row) != width:
            raise InvalidInput(f"CSV row {index + 1} has {len(row)} cells, expected {width}")
    # An empty cell is a missing value, as pandas reads it. Cells stay strings: the model's schema says
    # what they should be (validation converts), and untyped models get numbers recognised per column.
    cleaned = [[cell if cell != "" else None for cell in row] for row in data]
    return Payload(split=(header, cleaned), text_cells=True)


# -- responses ---------------------------------------------------------------------------------------


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"cannot serialize {type(value).__name__}")


_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def dumps(document: Any) -> bytes:
    return orjson.dumps(document, default=_default, option=_DUMPS_OPTIONS)


def encode(prediction: Prediction) -> bytes:
    outputs = prediction.outputs
    if prediction.layout is Layout.SINGLE:
        return dumps({"predictions": next(iter(outputs.values()))})
    if prediction.layout is Layout.COLUMNS:
        return dumps({"predictions": outputs})
    names = list(outputs)
    columns = [_as_list(array) for array in outputs.values()]
    records = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
    return dumps({"predictions": records})


def _as_list(array: Any) -> list[Any]:
    values: list[Any] = array.tolist() if isinstance(array, np.ndarray) else list(array)
    return values
