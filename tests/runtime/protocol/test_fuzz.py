"""Property-based tests (hypothesis) of every request parser and of validation against a schema: for any
body — the four MLflow JSON forms, CSV, OIP v2 JSON and binary tensors, well formed or not — the answer
is a payload or an ``InvalidInput`` (a 400 naming the problem), never another exception (a 500)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.errors import InvalidInput, ZeroserveError
from runtime.protocol import mlflow, v2
from runtime.types import ColumnSchema, ColumnSpec, TensorSchema, TensorSpec
from runtime.validation import conform

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=24,
)
KEYS = ["inputs", "instances", "dataframe_split", "dataframe_records", "columns", "data", "index", "params",
        "x", "y", "0", "1"]
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=4)
SCHEMAS = [
    None,
    TensorSchema((TensorSpec("float_input", np.dtype(np.float32), (-1, 3)),)),
    TensorSchema((TensorSpec("a", np.dtype(np.int64), (-1,)), TensorSpec("b", None, None))),
    ColumnSchema((ColumnSpec("x", np.dtype(np.float64), "double"),
                  ColumnSpec("y", np.dtype(np.int64), "long"),
                  ColumnSpec("s", np.dtype(object), "string", required=False))),
]


def refuses_clearly_or_decodes(call: Any) -> Any:
    try:
        return call()
    except InvalidInput as exc:
        assert exc.status_code == 400 and exc.message
        return None
    except ZeroserveError as exc:  # 4xx of their own kind (415 and the like) are clear too
        assert 400 <= exc.status_code < 500, exc
        return None


def validated(payload: Any) -> None:
    if payload is None:
        return
    for schema in SCHEMAS:
        refuses_clearly_or_decodes(lambda schema=schema: conform(payload, schema, allow_nan=False))


@FUZZ
@given(documents)
def test_mlflow_json_documents(document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    validated(refuses_clearly_or_decodes(lambda: mlflow.decode(body, "application/json")))


@FUZZ
@given(st.binary(max_size=200))
def test_mlflow_arbitrary_bytes(body: bytes) -> None:
    for content_type in ("application/json", "text/csv", "application/octet-stream", None):
        def decode(content_type: str | None = content_type) -> Any:
            return mlflow.decode(body, content_type)

        validated(refuses_clearly_or_decodes(decode))


@FUZZ
@given(st.lists(st.lists(st.one_of(st.text(max_size=5), st.integers(), st.floats()), min_size=1, max_size=4),
                max_size=5))
def test_csv_tables(rows: list[list[Any]]) -> None:
    body = "\n".join(",".join(str(cell) for cell in row) for row in rows).encode()
    validated(refuses_clearly_or_decodes(lambda: mlflow.decode(body, "text/csv")))


tensor_inputs = st.fixed_dictionaries({
    "name": st.one_of(st.sampled_from(["float_input", "a", "b"]), values),
    "shape": st.one_of(st.lists(st.integers(min_value=-2, max_value=4), max_size=3), values),
    "datatype": st.one_of(st.sampled_from(["FP32", "FP64", "INT64", "INT8", "BOOL", "BYTES", "UINT8"]),
                          values),
    "data": values,
}, optional={"parameters": values})


@FUZZ
@given(st.fixed_dictionaries({"inputs": st.one_of(st.lists(tensor_inputs, max_size=3), values)},
                             optional={"outputs": values, "parameters": values, "id": values}))
def test_v2_json_requests(document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    request = refuses_clearly_or_decodes(lambda: v2.decode(body, None))
    if request is not None:
        validated(request.payload)


@FUZZ
@given(tensor_inputs, st.binary(max_size=64), st.integers(min_value=-8, max_value=80))
def test_v2_binary_tensors(tensor: dict[str, Any], data: bytes, declared: int) -> None:
    described = dict(tensor)
    described.pop("data")
    described["parameters"] = {"binary_data_size": declared}
    header = json.dumps({"inputs": [described]}).encode()
    body = header + data
    refuses_clearly_or_decodes(lambda: v2.decode(body, str(len(header))))
    refuses_clearly_or_decodes(lambda: v2.decode(body, str(declared)))
