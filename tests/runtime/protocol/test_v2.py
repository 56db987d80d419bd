from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from runtime.errors import InvalidInput
from runtime.protocol import v2
from runtime.types import Layout, Prediction


def test_json_tensors_decode_with_their_shape_and_type() -> None:
    body = orjson.dumps(
        {
            "id": "42",
            "inputs": [
                {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},
                {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["hello"]},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    )
    request = v2.decode(body, None)
    assert request.id == "42" and request.outputs == {"y": True}
    assert request.payload.named is not None
    x = request.payload.named["x"]
    assert x.dtype == np.float32 and x.tolist() == [[1, 2], [3, 4]]
    assert request.payload.named["s"].tolist() == ["hello"]


def test_binary_tensors_decode_from_after_the_json_header() -> None:
    values = np.array([[1.5, 2.5]], dtype=np.float32)
    words = b"".join(struct.pack("<I", len(word)) + word for word in (b"ab", b"c"))
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
                {
                    "name": "w",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(words)},
                },
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    request = v2.decode(header + values.tobytes() + words, str(len(header)))
    assert request.binary_output
    assert request.payload.named is not None
    assert request.payload.named["x"].tolist() == [[1.5, 2.5]]
    assert request.payload.named["w"].tolist() == [b"ab", b"c"]


def _input(**fields: object) -> bytes:
    base: dict[str, object] = {"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}
    return orjson.dumps({"inputs": [{**base, **fields}]})


ONE = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}


@pytest.mark.parametrize(
    ("body", "header", "message"),
    [
        (b'{"inputs": []}', None, "non-empty"),
        (_input(datatype="FLOAT"), None, "unsupported datatype 'FLOAT'"),
        (_input(shape=[-1]), None, "non-negative integers"),
        (_input(shape=[3]), None, "needs 3 elements, data has 2"),
        (_input(data=["a", "b"]), None, "does not match datatype FP32"),
        (orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}), None, "neither data"),
        (_input(), "abc", "not an integer"),
        (_input(), "100000", "does not fit"),
        (_input(parameters={"binary_data_size": 8}), None, "does not fit the binary data"),
        (orjson.dumps({"inputs": [ONE] * 2}), None, "given twice"),
        (orjson.dumps({"inputs": [ONE], "outputs": [1]}), None, "outputs\\[0\\]"),
    ],
)  # fmt: skip
def test_malformed_requests_are_400(body: bytes, header: str | None, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        v2.decode(body, header)


def test_binary_size_must_match_the_shape() -> None:
    header = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}
    )
    with pytest.raises(InvalidInput, match="binary data has 4 bytes, the shape needs 8"):
        v2.decode(header + b"\x00" * 4, str(len(header)))


def test_unclaimed_binary_data_is_refused() -> None:
    header = _input()
    with pytest.raises(InvalidInput, match="no input claims"):
        v2.decode(header + b"\x00" * 4, str(len(header)))


def _prediction() -> Prediction:
    return Prediction(
        {
            "label": np.array([1, 0], dtype=np.int64),
            "probabilities": np.array([[0.2, 0.8], [0.9, 0.1]], np.float32),
        },
        Layout.COLUMNS,
    )


def test_json_response() -> None:
    request = v2.decode(_input(), None)
    body, header_length = v2.encode(_prediction(), request, model_name="m", model_version="3")
    assert header_length is None
    document = orjson.loads(body)
    assert document["model_name"] == "m" and document["model_version"] == "3"
    assert document["outputs"][1] == {
        "name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [0.2, 0.8, 0.9, 0.1],
    }  # fmt: skip


def test_binary_response_for_requested_outputs_only() -> None:
    request = v2.decode(
        orjson.dumps(
            {**orjson.loads(_input()), "outputs": [{"name": "label", "parameters": {"binary_data": True}}]}
        ),
        None,
    )
    body, header_length = v2.encode(_prediction(), request, model_name="m", model_version=None)
    assert header_length is not None
    header = orjson.loads(body[:header_length])
    assert [output["name"] for output in header["outputs"]] == ["label"]
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 16}
    assert np.frombuffer(body[header_length:], dtype="<i8").tolist() == [1, 0]


def test_unknown_requested_output_is_400() -> None:
    request = v2.decode(orjson.dumps({**orjson.loads(_input()), "outputs": [{"name": "nope"}]}), None)
    with pytest.raises(InvalidInput, match="unknown output"):
        v2.encode(_prediction(), request, model_name="m", model_version=None)


@pytest.mark.parametrize("binary", [False, True])
def test_a_response_decodes_back_to_its_outputs(binary: bool) -> None:
    # What a client of the protocol reads (the gateway's batch scorer): numbers and text, JSON or binary.
    prediction = Prediction({"label": np.array(["fraud", "ok"], dtype=object),
                             "probabilities": np.array([[0.2, 0.8], [0.9, 0.1]], dtype=np.float32)},
                            Layout.COLUMNS)
    asked = {**orjson.loads(_input()), "parameters": {"binary_data_output": binary}}
    request = v2.decode(orjson.dumps(asked), None)
    body, header_length = v2.encode(prediction, request, model_name="m", model_version=None)
    assert (header_length is not None) == binary
    outputs = v2.decode_outputs(body, None if header_length is None else str(header_length))
    assert outputs["probabilities"].tolist() == prediction.outputs["probabilities"].tolist()
    assert [value.decode() if isinstance(value, bytes) else value
            for value in outputs["label"].tolist()] == ["fraud", "ok"]
    with pytest.raises(InvalidInput, match="no \"outputs\" list"):
        v2.decode_outputs(b'{"model_name": "m"}', None)
