"""Reading an MLflow model directory's ``MLmodel`` without importing mlflow.

The signature is what validation needs, and parsing it here keeps mlflow off the path of models that
do not need it (an MLflow-logged ONNX model is served by onnxruntime alone).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from runtime.errors import ModelLoadError
from runtime.types import (
    MLFLOW_COLUMN_DTYPES,
    ColumnSchema,
    ColumnSpec,
    InputSchema,
    TensorSchema,
    TensorSpec,
)

MLMODEL = "MLmodel"
SERVING_EXAMPLE = "serving_input_example.json"


@dataclass(slots=True)
class MLmodelInfo:
    flavors: dict[str, dict[str, Any]]
    input_schema: InputSchema = None
    output_specs: tuple[TensorSpec, ...] = ()
    # Tensor inputs without names in the signature (the model takes a bare array).
    unnamed_tensor: bool = False
    has_params: bool = False
    example: dict[str, Any] | None = field(default=None)


def read_mlmodel(directory: Path) -> MLmodelInfo:
    try:
        with (directory / MLMODEL).open("rb") as handle:
            document = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"cannot read {directory / MLMODEL}: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("flavors"), dict):
        raise ModelLoadError(f"{directory / MLMODEL} has no flavors")
    info = MLmodelInfo(flavors=document["flavors"])
    signature = document.get("signature") or {}
    if signature.get("inputs"):
        info.input_schema, info.unnamed_tensor = _input_schema(json.loads(signature["inputs"]))
    if signature.get("outputs"):
        schema, _ = _input_schema(json.loads(signature["outputs"]))
        if isinstance(schema, TensorSchema):
            info.output_specs = schema.inputs
        elif isinstance(schema, ColumnSchema):
            info.output_specs = tuple(
                TensorSpec(column.name, column.dtype, (-1,)) for column in schema.columns
            )
    info.has_params = bool(signature.get("params"))
    example_path = directory / SERVING_EXAMPLE
    if example_path.is_file():
        try:
            example = json.loads(example_path.read_bytes())
        except ValueError as exc:
            raise ModelLoadError(f"{example_path} is not valid JSON: {exc}") from exc
        info.example = example if isinstance(example, dict) else None
    return info


def _input_schema(items: list[dict[str, Any]]) -> tuple[InputSchema, bool]:
    if not items:
        return None, False
    if all(item.get("type") == "tensor" for item in items):
        specs = []
        unnamed = not any(item.get("name") for item in items)
        for position, item in enumerate(items):
            tensor = item.get("tensor-spec") or {}
            dtype = (
                np.dtype(tensor["dtype"]) if tensor.get("dtype") not in (None, "str") else np.dtype(object)
            )
            shape = tuple(int(dim) for dim in tensor["shape"]) if tensor.get("shape") is not None else None
            specs.append(TensorSpec(item.get("name") or f"input-{position}", dtype, shape))
        return TensorSchema(tuple(specs)), unnamed
    columns = []
    for position, item in enumerate(items):
        type_name = item.get("type")
        if type_name not in MLFLOW_COLUMN_DTYPES:
            # Arrays, objects and maps: leave validation to mlflow itself.
            return None, False
        label = item.get("name")
        columns.append(
            ColumnSpec(
                # Only a column with no name at all is named by its position; 0 is a name.
                name=str(label) if label is not None else str(position),
                dtype=MLFLOW_COLUMN_DTYPES[type_name],
                type_name=type_name,
                required=bool(item.get("required", True)),
                label=label if isinstance(label, int) and not isinstance(label, bool) else None,
            )
        )
    return ColumnSchema(tuple(columns)), False
