"""The Open Inference Protocol (KServe v2): JSON tensors and the binary tensor extension.

With the binary extension the body is a JSON header of ``Inference-Header-Content-Length`` bytes
followed by the raw tensors, in input order, each ``parameters.binary_data_size`` bytes long;
BYTES elements are a 4-byte little-endian length followed by the bytes (as Triton and
``tritonclient`` do).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.errors import InvalidInput
from runtime.payload import Payload
from runtime.protocol.mlflow import dumps, loads
from runtime.types import V2_TO_NUMPY, Array, Prediction, TensorSpec, v2_datatype


@dataclass(slots=True)
class InferRequest:
    payload: Payload
    id: str | None = None
    # Requested output name -> whether it is wanted as binary; empty means all outputs.
    outputs: dict[str, bool] = field(default_factory=dict)
    binary_output: bool = False


def decode(body: bytes, header_length: str | None) -> InferRequest:
    document, binary = _split(body, header_length)
    if not isinstance(document, dict):
        raise InvalidInput("the inference request must be a JSON object")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput('the inference request needs a non-empty "inputs" list')
    named = _decode_tensors(raw_inputs, binary, "input")
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput('"parameters" must be an object')
    request_id = document.get("id")
    return InferRequest(
        payload=Payload(named=named),
        id=str(request_id) if request_id is not None else None,
        outputs=_requested_outputs(document.get("outputs")),
        binary_output=bool(parameters.get("binary_data_output", False)),
    )


def decode_outputs(body: bytes, header_length: str | None) -> dict[str, Array]:
    """The outputs of an inference response (JSON or binary tensors) by name: what a client reads (the
    gateway's batch scorer); the same checks as a request's inputs get."""
    document, binary = _split(body, header_length)
    raw_outputs = document.get("outputs") if isinstance(document, dict) else None
    if not isinstance(raw_outputs, list):
        raise InvalidInput('the inference response has no "outputs" list')
    return _decode_tensors(raw_outputs, binary, "output")


def _split(body: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    """The JSON header and the binary data after it (``Inference-Header-Content-Length``)."""
    if header_length is None:
        return loads(body), memoryview(b"")
    try:
        split_at = int(header_length)
    except ValueError:
        raise InvalidInput(f"Inference-Header-Content-Length is not an integer: {header_length!r}") from None
    if not 0 < split_at <= len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length {split_at} does not fit a body of {len(body)} bytes")
    return loads(body[:split_at]), memoryview(body)[split_at:]


def _decode_tensors(raw: list[Any], binary: memoryview, kind: str) -> dict[str, Array]:
    named: dict[str, Array] = {}
    offset = 0
    for position, entry in enumerate(raw):
        name, array, used = _decode_tensor(entry, position, binary, offset, kind)
        if name in named:
            raise InvalidInput(f"{kind} {name!r} is given twice")
        named[name] = array
        offset += used
    if offset != len(binary):
        raise InvalidInput(f"the body has {len(binary) - offset} bytes of binary data that no {kind} claims")
    return named


def _decode_tensor(
    raw: Any, position: int, binary: memoryview, offset: int, kind: str
) -> tuple[str, Array, int]:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InvalidInput(f"{kind}s[{position}] must be an object with a name, shape, datatype and data")
    name = raw["name"]
    what = f"{kind} {name!r}"
    datatype = raw.get("datatype")
    dtype = V2_TO_NUMPY.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(f"{what}: unsupported datatype {datatype!r}; use one of {sorted(V2_TO_NUMPY)}")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(dim, int) and dim >= 0 for dim in shape):
        raise InvalidInput(f"{what}: shape must be a list of non-negative integers, got {shape!r}")
    count = int(np.prod(shape)) if shape else 1
    parameters = raw.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InvalidInput(f"{what}: binary_data_size {size!r} does not fit the binary data sent")
        chunk = binary[offset : offset + size]
        array = _from_bytes(chunk, dtype, count, what)
        return name, array.reshape(shape), size
    if "data" not in raw:
        raise InvalidInput(f"{what}: has neither data nor parameters.binary_data_size")
    try:
        if dtype.kind == "O":
            array = np.asarray(raw["data"], dtype=object).reshape(-1)
        else:
            array = np.asarray(raw["data"], dtype=dtype).reshape(-1)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{what}: data does not match datatype {datatype}: {exc}") from None
    if array.size != count:
        raise InvalidInput(f"{what}: shape {shape} needs {count} elements, data has {array.size}")
    return name, array.reshape(shape), 0


def _from_bytes(chunk: memoryview, dtype: np.dtype[Any], count: int, what: str) -> Array:
    if dtype.kind != "O":
        if len(chunk) != count * dtype.itemsize:
            raise InvalidInput(
                f"{what}: binary data has {len(chunk)} bytes, the shape needs {count * dtype.itemsize}"
            )
        return np.frombuffer(chunk, dtype=dtype.newbyteorder("<"), count=count)
    items: list[bytes] = []
    position = 0
    while position < len(chunk):
        if position + 4 > len(chunk):
            raise InvalidInput(f"{what}: truncated BYTES element")
        (length,) = struct.unpack_from("<I", chunk, position)
        position += 4
        if position + length > len(chunk):
            raise InvalidInput(f"{what}: truncated BYTES element")
        items.append(bytes(chunk[position : position + length]))
        position += length
    if len(items) != count:
        raise InvalidInput(f"{what}: the shape needs {count} BYTES elements, the data has {len(items)}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def _requested_outputs(raw: Any) -> dict[str, bool]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise InvalidInput('"outputs" must be a list')
    requested: dict[str, bool] = {}
    for position, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{position}] must be an object with a name")
        parameters = item.get("parameters") or {}
        requested[item["name"]] = bool(isinstance(parameters, dict) and parameters.get("binary_data"))
    return requested


# -- responses ---------------------------------------------------------------------------------------


def encode(
    prediction: Prediction, request: InferRequest, *, model_name: str, model_version: str | None
) -> tuple[bytes, int | None]:
    """The response body and, for a binary response, the length of its JSON header."""
    outputs = prediction.outputs
    unknown = [name for name in request.outputs if name not in outputs]
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; the model's outputs: {list(outputs)}")
    names = list(request.outputs) or list(outputs)
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in names:
        array = np.asarray(outputs[name])
        binary = request.outputs.get(name, request.binary_output)
        entry: dict[str, Any] = {
            "name": name,
            "datatype": v2_datatype(array.dtype),
            "shape": list(array.shape),
        }
        if binary:
            blob = _to_bytes(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _flat_json(array)
        entries.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "outputs": entries}
    if model_version is not None:
        document["model_version"] = model_version
    if request.id is not None:
        document["id"] = request.id
    header = dumps(document)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _flat_json(array: Array) -> Any:
    flat = array.reshape(-1)
    if flat.dtype.kind in "OSU":
        return [
            item.decode("utf-8", errors="replace") if isinstance(item, bytes) else item
            for item in flat.tolist()
        ]
    return np.ascontiguousarray(flat)


def _to_bytes(array: Array) -> bytes:
    if array.dtype.kind not in "OSU":
        return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    parts: list[bytes] = []
    for item in array.reshape(-1).tolist():
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def tensor_metadata(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    return [
        {
            "name": spec.name,
            "datatype": v2_datatype(spec.dtype),
            "shape": list(spec.shape) if spec.shape is not None else [-1],
        }
        for spec in specs
    ]
