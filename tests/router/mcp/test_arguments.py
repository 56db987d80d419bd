"""Tool arguments checked against the input schema, with messages that name each violation."""

from __future__ import annotations

from typing import Any

import pytest

from router.mcp.arguments import MAX_REPORTED, ArgumentChecker, InvalidArguments, location
from router.mcp.schema import tool_schema
from router.mcp.signature import Column, ColumnSchema, ModelSignature, Tensor, TensorSchema

PROPENSITY = ModelSignature(
    inputs=ColumnSchema((Column("age", {"type": "long"}), Column("avg_basket", {"type": "double"}),
                         Column("is_member", {"type": "boolean"}))),
    outputs=ColumnSchema((Column("probability", {"type": "double"}),)),
)
ROW = {"age": 41, "avg_basket": 37.5, "is_member": True}


def violation(signature: ModelSignature, arguments: Any) -> str:
    with pytest.raises(InvalidArguments) as caught:
        ArgumentChecker(tool_schema(signature)).check(arguments)
    message = caught.value.message
    prefix = "arguments do not match the tool's input schema: "
    assert message.startswith(prefix) or "must be an object" in message
    return message


@pytest.mark.parametrize(("arguments", "expected"), [
    ({**ROW, "age": "forty"}, "age: 'forty' is not of type 'integer'"),
    ({"records": [ROW, {**ROW, "is_member": 1}]}, "records[1].is_member: 1 is not of type 'boolean'"),
    ({**ROW, "income": 1}, "arguments: Additional properties are not allowed ('income' was unexpected)"),
    ({"age": 41}, "missing column(s) 'avg_basket', 'is_member' of the row (or give several rows in"),
    ({**ROW, "records": [ROW]}, "give either the columns of one row or several rows in 'records', not both"),
    ({"records": []}, "records: [] should be non-empty"),
    ({**ROW, "age": 2**64}, f"age: {2**64} is greater than the maximum of {2**63 - 1}"),
    (["not", "an", "object"], "arguments must be an object, got list"),
], ids=["type", "type-in-records", "unexpected", "missing", "both-forms", "no-records", "overflow", "list"])
def test_violations_are_named(arguments: Any, expected: str) -> None:
    assert expected in violation(PROPENSITY, arguments)


def test_several_violations_are_reported_together_up_to_a_limit() -> None:
    rows = [{**ROW, "age": f"bad-{index}"} for index in range(MAX_REPORTED + 2)]
    message = violation(PROPENSITY, {"records": rows})
    assert message.count("is not of type 'integer'") == MAX_REPORTED
    assert message.endswith("; and 2 more")


def test_the_scoring_form_names_the_keys_it_wants() -> None:
    message = violation(ModelSignature(), {"inputs": [[1.0]], "instances": [[1.0]]})
    keys = "dataframe_split, dataframe_records, instances, inputs"
    assert f"give exactly one of {keys} (got instances, inputs)" in message


def test_tensor_shapes_are_checked() -> None:
    signature = ModelSignature(inputs=TensorSchema((Tensor("x", "float32", (-1, 2)),)))
    assert "x[0]: [1.0, 2.0, 3.0] is too long" in violation(signature, {"x": [[1.0, 2.0, 3.0]]})
    assert ArgumentChecker(tool_schema(signature)).check({"x": [[1.0, 2.0]]}) == {"x": [[1.0, 2.0]]}


def test_valid_arguments_pass_through() -> None:
    checker = ArgumentChecker(tool_schema(PROPENSITY))
    assert checker.check(ROW) == ROW
    assert checker.check({"records": [ROW]}) == {"records": [ROW]}


def test_output_violations_are_described_briefly() -> None:
    checker = ArgumentChecker(tool_schema(PROPENSITY))
    assert checker.output_violation({"predictions": [{"probability": 0.5}]}) is None
    described = checker.output_violation({"predictions": [{"probability": "x" * 1000}]})
    assert described is not None and described.startswith("predictions: ") and len(described) < 400
    assert ArgumentChecker(tool_schema(ModelSignature())).output_violation({"anything": 1}) is None


@pytest.mark.parametrize(("path", "expected"), [
    ([], "arguments"), (["records", 1, "age"], "records[1].age"), (["x", 0, 2], "x[0][2]"),
])
def test_locations(path: list[str | int], expected: str) -> None:
    assert location(path) == expected
