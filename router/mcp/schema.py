"""A model signature as MCP tool schemas, and tool arguments as an MLflow scoring request.

Pure functions of the signature. The argument forms an agent sees:

* column signature: the columns of one row as top-level properties (``{"age": 41, ...}``), or several
  rows as ``records`` (``{"records": [{"age": 41, ...}, ...]}``); sent as ``dataframe_records``;
* tensor signature: one property per named tensor (nested arrays whose depth and fixed sizes follow
  the shape), or ``inputs`` for a model that takes one unnamed tensor; sent as ``inputs``;
* no known signature: the MLflow scoring body itself (exactly one of ``dataframe_split``,
  ``dataframe_records``, ``instances``, ``inputs``), sent unchanged.

Params declared by the signature go in an optional ``params`` object. The output schema describes the
replica's reply, ``{"predictions": ...}``, in every layout the runtime may render it in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from router.mcp.signature import Column, ColumnSchema, ModelSignature, Param, Schema, Tensor, TensorSchema

JSONSchema = dict[str, Any]
Form = Literal["row_or_records", "records", "tensors", "tensor", "scoring"]

RECORDS = "records"
PARAMS = "params"
UNNAMED_TENSOR = "inputs"
SCORING_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_INT32 = {"minimum": -(2**31), "maximum": 2**31 - 1}
_INT64 = {"minimum": -(2**63), "maximum": 2**63 - 1}

# MLflow column types (ColSpec) as JSON Schema.
_COLUMN_TYPES: dict[str, JSONSchema] = {
    "boolean": {"type": "boolean"},
    "integer": {"type": "integer", **_INT32},
    "long": {"type": "integer", **_INT64},
    "float": {"type": "number"},
    "double": {"type": "number"},
    "string": {"type": "string"},
    "binary": {"type": "string", "contentEncoding": "base64"},
    "datetime": {"type": "string", "format": "date-time"},
    "any": {},
}


@dataclass(frozen=True, slots=True)
class ToolSchema:
    form: Form
    input_schema: JSONSchema
    output_schema: JSONSchema | None
    # The names of the row's columns / the tensors, in signature order (for messages and descriptions).
    fields: tuple[str, ...] = ()
    has_params: bool = False


def tool_schema(signature: ModelSignature) -> ToolSchema:
    params = _params_schema(signature.params)
    output = output_schema(signature.outputs)
    inputs = signature.inputs
    if isinstance(inputs, ColumnSchema) and all(column.name for column in inputs.columns):
        return _column_tool(inputs.columns, params, output)
    if isinstance(inputs, TensorSchema) and (inputs.unnamed or all(t.name for t in inputs.tensors)):
        return _tensor_tool(inputs, params, output)
    # No signature, or one without names (nothing to name the properties after).
    return ToolSchema("scoring", scoring_schema(), output)


def _column_tool(
    columns: tuple[Column, ...], params: JSONSchema | None, output: JSONSchema | None
) -> ToolSchema:
    names = tuple(str(column.name) for column in columns)
    row: JSONSchema = {
        "type": "object",
        "properties": {str(column.name): column_value_schema(column) for column in columns},
        "required": [str(column.name) for column in columns if column.required],
        "additionalProperties": False,
    }
    records = {"type": "array", "items": row, "minItems": 1,
               "description": "Several rows to score at once, each an object of the columns."}
    extra: JSONSchema = {PARAMS: params} if params is not None else {}
    if RECORDS in names or (params is not None and PARAMS in names):
        # A column named like one of the tool's own properties: rows can only go in ``records``.
        schema: JSONSchema = {"type": "object", "properties": {RECORDS: records, **extra},
                              "required": [RECORDS], "additionalProperties": False}
        return ToolSchema("records", schema, output, names, params is not None)
    schema = {
        "type": "object",
        "description": "Either the columns of one row, or several rows in 'records'.",
        "properties": {**row["properties"], RECORDS: records, **extra},
        # Exactly one form: the row (no ``records``), or ``records`` (and none of the row's columns).
        "oneOf": [
            {"required": row["required"], "not": {"required": [RECORDS]}},
            {"required": [RECORDS], "not": {"anyOf": [{"required": [name]} for name in names]}},
        ],
        "additionalProperties": False,
    }
    return ToolSchema("row_or_records", schema, output, names, params is not None)


def _tensor_tool(inputs: TensorSchema, params: JSONSchema | None, output: JSONSchema | None) -> ToolSchema:
    if inputs.unnamed:
        properties = {UNNAMED_TENSOR: tensor_schema(inputs.tensors[0])}
        form: Form = "tensor"
    else:
        properties = {str(tensor.name): tensor_schema(tensor) for tensor in inputs.tensors}
        form = "tensors"
    names = tuple(properties)
    if params is not None and PARAMS not in properties:
        properties[PARAMS] = params
    schema = {"type": "object", "properties": properties, "required": list(names),
              "additionalProperties": False}
    return ToolSchema(form, schema, output, names, PARAMS in properties and PARAMS not in names)


def scoring_schema() -> JSONSchema:
    """The MLflow scoring protocol body, for models without a usable signature."""
    return {
        "type": "object",
        "description": "An MLflow scoring request: exactly one of dataframe_split, dataframe_records, "
                       "instances or inputs, and optional params.",
        "properties": {
            "dataframe_split": {
                "type": "object",
                "properties": {"columns": {"type": "array", "items": {"type": "string"}},
                               "data": {"type": "array", "items": {"type": "array"}, "minItems": 1},
                               "index": {"type": "array"}},
                "required": ["data"],
                "additionalProperties": False,
            },
            "dataframe_records": {"type": "array", "items": {"type": "object"}, "minItems": 1},
            "instances": {"type": "array", "minItems": 1},
            "inputs": {"type": ["array", "object"]},
            PARAMS: {"type": "object"},
        },
        "oneOf": [{"required": [key]} for key in SCORING_KEYS],
        "additionalProperties": False,
    }


def column_value_schema(column: Column) -> JSONSchema:
    schema = mlflow_type_schema(column.spec)
    return schema if column.required else nullable(schema)


def mlflow_type_schema(spec: dict[str, Any]) -> JSONSchema:
    """An MLflow type (a scalar name, or an ``array``, ``object`` or ``map`` spec) as JSON Schema."""
    kind = spec.get("type")
    if isinstance(kind, str) and kind in _COLUMN_TYPES:
        return dict(_COLUMN_TYPES[kind])
    if kind == "array":
        return {"type": "array", "items": mlflow_type_schema(spec["items"])}
    if kind == "object":
        properties = spec.get("properties") or {}
        return {
            "type": "object",
            "properties": {name: mlflow_type_schema(item) for name, item in properties.items()},
            "required": [name for name, item in properties.items() if item.get("required", True)],
        }
    if kind == "map":
        return {"type": "object", "additionalProperties": mlflow_type_schema(spec["values"])}
    return {}  # a type newer than this code: accept any value and let the replica judge it


def nullable(schema: JSONSchema) -> JSONSchema:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    if not schema:
        return schema
    return {"anyOf": [schema, {"type": "null"}]}


def element_schema(dtype: str) -> JSONSchema:
    """A numpy dtype name as the JSON Schema of one element."""
    if dtype == "bool":
        return {"type": "boolean"}
    if dtype.startswith(("float", "double")):
        return {"type": "number"}
    if dtype.startswith("uint"):
        return {"type": "integer", "minimum": 0}
    if dtype.startswith("int"):
        return {"type": "integer"}
    if dtype in ("str", "object", "string") or dtype.startswith(("<U", "|S", "bytes", "str")):
        return {"type": "string"}
    return {}


def tensor_schema(tensor: Tensor, element: JSONSchema | None = None) -> JSONSchema:
    """Nested arrays, outermost dimension first: ``[-1, 4]`` float32 is any number of rows of 4 numbers."""
    schema = element if element is not None else element_schema(tensor.dtype)
    if tensor.shape is None:
        return {}  # any rank: no nesting to describe
    for dim in reversed(tensor.shape):
        schema = {"type": "array", "items": schema}
        if dim >= 0:
            schema["minItems"] = schema["maxItems"] = dim
    if tensor.shape:
        schema["description"] = f"{tensor.dtype} tensor of shape {list(tensor.shape)} (-1: any size)"
    return schema


def _params_schema(params: tuple[Param, ...]) -> JSONSchema | None:
    if not params:
        return None
    properties: dict[str, JSONSchema] = {}
    for param in params:
        schema = mlflow_type_schema({"type": param.type_name})
        if param.shape is not None:
            for _ in param.shape:
                schema = {"type": "array", "items": schema}
        if param.default is not None:
            schema["default"] = param.default
        properties[param.name] = schema
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "description": "Inference parameters; each has a default."}


def output_schema(outputs: Schema) -> JSONSchema | None:
    """``{"predictions": ...}`` in each layout the runtime renders (a list of values or of records,
    or an object of named arrays), or None when the signature declares no outputs."""
    if isinstance(outputs, ColumnSchema):
        values = {str(column.name or index): nullable(mlflow_type_schema(column.spec))
                  for index, column in enumerate(outputs.columns)}
    elif isinstance(outputs, TensorSchema):
        # Per-row value: a tensor's shape without its batch dimension.
        values = {str(tensor.name or index): _row_of(tensor) for index, tensor in enumerate(outputs.tensors)}
    else:
        return None
    record = {"type": "object", "properties": values}
    forms: list[JSONSchema] = [
        {"type": "array", "items": {"anyOf": [record, *values.values()]} if len(values) == 1 else record},
        {"type": "object", "properties": {name: {"type": "array", "items": value}
                                          for name, value in values.items()}},
    ]
    return {
        "type": "object",
        "properties": {"predictions": {"anyOf": forms}},
        "required": ["predictions"],
    }


def _row_of(tensor: Tensor) -> JSONSchema:
    # A NaN in a float output is rendered as null.
    element = nullable(element_schema(tensor.dtype))
    if tensor.shape is None or len(tensor.shape) <= 1:
        return {} if tensor.shape is None else element
    return tensor_schema(Tensor(tensor.name, tensor.dtype, tensor.shape[1:]), element)


def request_body(schema: ToolSchema, arguments: dict[str, Any]) -> dict[str, Any]:
    """The ``/invocations`` body for (already validated) tool arguments."""
    if schema.form == "scoring":
        return dict(arguments)
    body: dict[str, Any]
    if schema.form in ("row_or_records", "records"):
        if RECORDS in arguments:
            body = {"dataframe_records": arguments[RECORDS]}
        else:
            row = {name: arguments[name] for name in schema.fields if name in arguments}
            body = {"dataframe_records": [row]}
    elif schema.form == "tensor":
        body = {"inputs": arguments[UNNAMED_TENSOR]}
    else:
        body = {"inputs": {name: arguments[name] for name in schema.fields}}
    if schema.has_params and arguments.get(PARAMS):
        body[PARAMS] = arguments[PARAMS]
    return body
