"""Model signatures as tool schemas, and tool arguments as MLflow scoring requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from router.mcp.schema import (
    element_schema,
    mlflow_type_schema,
    output_schema,
    request_body,
    tensor_schema,
    tool_schema,
)
from router.mcp.signature import Column, ColumnSchema, ModelSignature, Param, Tensor, TensorSchema


def columns(*specs: tuple[str, str] | tuple[str, str, bool]) -> ColumnSchema:
    return ColumnSchema(tuple(Column(spec[0], {"type": spec[1]}, spec[2] if len(spec) > 2 else True)
                              for spec in specs))


PROPENSITY = ModelSignature(
    inputs=columns(("age", "long"), ("avg_basket", "double"), ("is_member", "boolean")),
    outputs=columns(("probability", "double")),
    source="MLmodel",
)
ROW = {"age": 41, "avg_basket": 37.5, "is_member": True}


@dataclass(frozen=True)
class TypeCase:
    id: str
    spec: dict[str, Any]
    expected: dict[str, Any]


TYPE_CASES = [
    TypeCase("long", {"type": "long"}, {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}),
    TypeCase("integer", {"type": "integer"}, {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}),
    TypeCase("double", {"type": "double"}, {"type": "number"}),
    TypeCase("float", {"type": "float"}, {"type": "number"}),
    TypeCase("boolean", {"type": "boolean"}, {"type": "boolean"}),
    TypeCase("string", {"type": "string"}, {"type": "string"}),
    TypeCase("binary", {"type": "binary"}, {"type": "string", "contentEncoding": "base64"}),
    TypeCase("datetime", {"type": "datetime"}, {"type": "string", "format": "date-time"}),
    TypeCase("any", {"type": "any"}, {}),
    TypeCase("array", {"type": "array", "items": {"type": "string"}},
             {"type": "array", "items": {"type": "string"}}),
    TypeCase("object", {"type": "object", "properties": {"a": {"type": "string", "required": True},
                                                          "b": {"type": "double", "required": False}}},
             {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "number"}},
              "required": ["a"]}),
    TypeCase("map", {"type": "map", "values": {"type": "double"}},
             {"type": "object", "additionalProperties": {"type": "number"}}),
    TypeCase("unknown-future-type", {"type": "quaternion"}, {}),
]


@pytest.mark.parametrize("case", TYPE_CASES, ids=[case.id for case in TYPE_CASES])
def test_mlflow_types_as_json_schema(case: TypeCase) -> None:
    assert mlflow_type_schema(case.spec) == case.expected


@pytest.mark.parametrize(("dtype", "expected"), [
    ("float32", {"type": "number"}), ("float64", {"type": "number"}), ("int64", {"type": "integer"}),
    ("uint8", {"type": "integer", "minimum": 0}), ("bool", {"type": "boolean"}),
    ("object", {"type": "string"}), ("complex64", {}),
])
def test_tensor_elements(dtype: str, expected: dict[str, Any]) -> None:
    assert element_schema(dtype) == expected


def test_tensor_shape_becomes_nested_arrays() -> None:
    schema = tensor_schema(Tensor("x", "float32", (-1, 4)))
    assert schema["type"] == "array" and "minItems" not in schema  # the batch: any size
    assert schema["items"] == {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}
    assert tensor_schema(Tensor("x", "float32", None)) == {}  # any rank
    validator = Draft202012Validator(schema)
    assert validator.is_valid([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert not validator.is_valid([[1, 2, 3]])


def test_a_column_signature_takes_one_row_or_records() -> None:
    schema = tool_schema(PROPENSITY)
    assert schema.form == "row_or_records" and schema.fields == ("age", "avg_basket", "is_member")
    validator = Draft202012Validator(schema.input_schema)
    assert validator.is_valid(ROW)
    assert validator.is_valid({"records": [ROW, ROW]})
    assert not validator.is_valid({**ROW, "records": [ROW]})  # both forms at once
    assert not validator.is_valid({"age": 41})  # a partial row
    assert not validator.is_valid({"records": []})
    assert not validator.is_valid({**ROW, "extra": 1})
    assert request_body(schema, ROW) == {"dataframe_records": [ROW]}
    assert request_body(schema, {"records": [ROW, ROW]}) == {"dataframe_records": [ROW, ROW]}


def test_optional_columns_may_be_null_or_left_out() -> None:
    schema = tool_schema(ModelSignature(inputs=columns(("x", "double"), ("note", "string", False))))
    validator = Draft202012Validator(schema.input_schema)
    assert validator.is_valid({"x": 1.0})
    assert validator.is_valid({"x": 1.0, "note": None})
    assert request_body(schema, {"x": 1.0}) == {"dataframe_records": [{"x": 1.0}]}


@pytest.mark.parametrize("clashing", ["records", "params"])
def test_a_column_named_like_a_tool_property_leaves_only_the_records_form(clashing: str) -> None:
    signature = ModelSignature(inputs=columns((clashing, "double"), ("x", "double")),
                               params=(Param("scale", "double", 1.0),))
    schema = tool_schema(signature)
    assert schema.form == "records" and schema.input_schema["required"] == ["records"]
    row = {clashing: 1.0, "x": 2.0}
    assert Draft202012Validator(schema.input_schema).is_valid({"records": [row], "params": {"scale": 2.0}})
    assert request_body(schema, {"records": [row], "params": {"scale": 2.0}}) == {
        "dataframe_records": [row], "params": {"scale": 2.0}}


def test_params_carry_their_types_and_defaults() -> None:
    signature = ModelSignature(inputs=columns(("x", "double")),
                               params=(Param("scale", "double", 1.0), Param("ks", "long", [1, 2], (-1,))))
    schema = tool_schema(signature)
    params = schema.input_schema["properties"]["params"]
    assert params["properties"]["scale"] == {"type": "number", "default": 1.0}
    assert params["properties"]["ks"]["type"] == "array" and params["properties"]["ks"]["default"] == [1, 2]
    assert request_body(schema, {"x": 1.0, "params": {"scale": 3.0}}) == {
        "dataframe_records": [{"x": 1.0}], "params": {"scale": 3.0}}
    assert request_body(schema, {"x": 1.0}) == {"dataframe_records": [{"x": 1.0}]}


def test_named_tensors_are_properties_sent_as_inputs() -> None:
    signature = ModelSignature(inputs=TensorSchema((Tensor("x", "float32", (-1, 4)),
                                                   Tensor("mask", "bool", (-1,)))))
    schema = tool_schema(signature)
    assert schema.form == "tensors" and schema.input_schema["required"] == ["x", "mask"]
    arguments = {"x": [[1.0, 2.0, 3.0, 4.0]], "mask": [True]}
    assert Draft202012Validator(schema.input_schema).is_valid(arguments)
    assert request_body(schema, arguments) == {"inputs": arguments}


def test_an_unnamed_tensor_is_the_inputs_property() -> None:
    schema = tool_schema(ModelSignature(inputs=TensorSchema((Tensor(None, "float64", (-1, 2)),))))
    assert schema.form == "tensor" and list(schema.input_schema["properties"]) == ["inputs"]
    assert request_body(schema, {"inputs": [[1.0, 2.0]]}) == {"inputs": [[1.0, 2.0]]}


@pytest.mark.parametrize("signature", [
    ModelSignature(),
    ModelSignature(inputs=ColumnSchema((Column(None, {"type": "double"}),))),  # columns without names
], ids=["no-signature", "unnamed-columns"])
def test_without_a_usable_signature_the_tool_takes_the_scoring_body(signature: ModelSignature) -> None:
    schema = tool_schema(signature)
    assert schema.form == "scoring"
    validator = Draft202012Validator(schema.input_schema)
    body = {"dataframe_split": {"columns": ["x"], "data": [[1.0]]}}
    assert validator.is_valid(body) and request_body(schema, body) == body
    assert validator.is_valid({"inputs": [[1.0]], "params": {"k": 1}})
    assert not validator.is_valid({"inputs": [[1.0]], "instances": [[1.0]]})  # exactly one
    assert not validator.is_valid({})


@pytest.mark.parametrize("predictions", [
    [{"probability": 0.3}, {"probability": None}],  # records (a DataFrame); NaN is rendered null
    [0.3, 0.7],  # a list of values (a Series or an array)
    {"probability": [0.3, 0.7]},  # named columns (a dict)
], ids=["records", "values", "columns"])
def test_column_outputs_accept_each_layout_the_runtime_renders(predictions: Any) -> None:
    schema = output_schema(PROPENSITY.outputs)
    assert schema is not None
    validator = Draft202012Validator(schema)
    assert validator.is_valid({"predictions": predictions})
    assert not validator.is_valid({"predictions": [{"probability": "high"}]})
    assert not validator.is_valid({"scores": predictions})


def test_tensor_outputs_drop_the_batch_dimension_per_row() -> None:
    single = output_schema(TensorSchema((Tensor("scores", "float32", (-1, 3)),)))
    assert single is not None
    assert Draft202012Validator(single).is_valid({"predictions": [[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]]})
    assert not Draft202012Validator(single).is_valid({"predictions": [[0.1, 0.2]]})
    two = output_schema(TensorSchema((Tensor("label", "int64", (-1,)), Tensor("probabilities", "float32",
                                                                           (-1, 2)))))
    assert two is not None
    assert Draft202012Validator(two).is_valid({"predictions": {"label": [1, 0],
                                                               "probabilities": [[0.2, 0.8], [0.9, 0.1]]}})
    assert output_schema(None) is None


def test_every_generated_schema_is_valid_json_schema() -> None:
    signatures = [PROPENSITY, ModelSignature(), ModelSignature(
        inputs=TensorSchema((Tensor("x", "float32", (-1, 4)),)),
        outputs=TensorSchema((Tensor("scores", "float32", (-1, 3)),)),
        params=(Param("temperature", "float", 0.5),))]
    for signature in signatures:
        schema = tool_schema(signature)
        Draft202012Validator.check_schema(schema.input_schema)
        assert schema.input_schema["type"] == "object"  # MCP requires an object at the top
        if schema.output_schema is not None:
            Draft202012Validator.check_schema(schema.output_schema)
