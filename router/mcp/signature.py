"""What a model takes and returns, read from the files of its directory (no model is loaded).

An MCP tool's schemas come from here. The sources, in the order the runtime's loaders use them:

* ``MLmodel`` (any MLflow model): its ``signature`` — column specs (``{"type": "long", "name": "age"}``,
  arrays, objects, maps), tensor specs (``{"type": "tensor", "tensor-spec": {...}}``) and params;
* ``signature.json`` (zeroserve's convention for TorchScript and ``torch.export`` models): Open
  Inference Protocol datatypes and shapes;
* a ``.onnx`` file: the graph's declared inputs and outputs (read with ``onnx`` when it is installed).

Anything else has no known signature; its tool then takes the MLflow scoring protocol body as is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SIGNATURE_JSON = "signature.json"
MLMODEL = "MLmodel"


class SignatureError(Exception):
    """A signature file exists but cannot be understood."""


@dataclass(frozen=True, slots=True)
class Column:
    """One column of an MLflow column signature; ``spec`` is the MLflow type JSON of its values."""

    name: str | None
    spec: dict[str, Any]
    required: bool = True


@dataclass(frozen=True, slots=True)
class Tensor:
    """One tensor; ``dtype`` is a numpy dtype name, ``shape`` uses -1 for any size (None: any rank)."""

    name: str | None
    dtype: str
    shape: tuple[int, ...] | None


@dataclass(frozen=True, slots=True)
class Param:
    """An inference parameter of an MLflow signature (``params``), with its default."""

    name: str
    type_name: str
    default: Any
    shape: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class ColumnSchema:
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class TensorSchema:
    tensors: tuple[Tensor, ...]

    @property
    def unnamed(self) -> bool:
        """A single tensor without a name: the model takes a bare array."""
        return len(self.tensors) == 1 and not self.tensors[0].name


Schema = ColumnSchema | TensorSchema | None


@dataclass(frozen=True, slots=True)
class ModelSignature:
    inputs: Schema = None
    outputs: Schema = None
    params: tuple[Param, ...] = ()
    # Where it came from ("MLmodel", "signature.json", "ONNX graph"), or "none".
    source: str = "none"


UNKNOWN = ModelSignature()

# Open Inference Protocol datatypes (signature.json) as numpy dtype names.
_V2_DTYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
    "FP32": "float32", "FP64": "float64", "BYTES": "object",
}
# ONNX TensorProto element types (onnx.TensorProto.DataType values) as numpy dtype names.
_ONNX_DTYPES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "object",
    9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
}


def read_signature(path: Path) -> ModelSignature:
    """The signature of the model at ``path`` (a model directory or a single model file)."""
    if path.is_file():
        return _onnx_signature(path) if path.suffix == ".onnx" else UNKNOWN
    if (path / MLMODEL).is_file():
        return mlmodel_signature(path / MLMODEL)
    if (path / SIGNATURE_JSON).is_file():
        return v2_signature(path / SIGNATURE_JSON)
    onnx_files = sorted(path.glob("*.onnx"))
    if onnx_files:
        # The runtime serves model.onnx when there are several; so does the signature.
        preferred = [file for file in onnx_files if file.stem == "model"]
        return _onnx_signature((preferred or onnx_files)[0])
    return UNKNOWN


def mlmodel_signature(path: Path) -> ModelSignature:
    try:
        document = yaml.safe_load(path.read_bytes())
    except (OSError, yaml.YAMLError) as exc:
        raise SignatureError(f"cannot read {path}: {exc}") from exc
    signature = document.get("signature") if isinstance(document, dict) else None
    if not isinstance(signature, dict):
        return ModelSignature(source=MLMODEL)
    try:
        return ModelSignature(
            inputs=mlflow_schema(_json_field(signature, "inputs")),
            outputs=mlflow_schema(_json_field(signature, "outputs")),
            params=tuple(_param(item) for item in _json_field(signature, "params") or ()),
            source=MLMODEL,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"{path} has a signature zeroserve cannot read: {exc}") from exc


def _json_field(signature: dict[str, Any], key: str) -> list[dict[str, Any]] | None:
    # MLmodel keeps each part of the signature as a JSON string inside the YAML document.
    raw = signature.get(key)
    if raw is None:
        return None
    value = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(value, list):
        raise ValueError(f"signature {key} is not a list")
    return value


def mlflow_schema(items: list[dict[str, Any]] | None) -> Schema:
    """An MLflow schema (the JSON list of ``ColSpec``s or ``TensorSpec``s)."""
    if not items:
        return None
    if all(item.get("type") == "tensor" for item in items):
        tensors = []
        for item in items:
            spec = item["tensor-spec"]
            shape = spec.get("shape")
            tensors.append(Tensor(item.get("name"), str(spec["dtype"]),
                                  tuple(int(dim) for dim in shape) if shape is not None else None))
        return TensorSchema(tuple(tensors))
    columns = []
    for item in items:
        spec = {key: value for key, value in item.items() if key not in ("name", "required")}
        if "type" not in spec:
            raise ValueError(f"column {item.get('name')!r} has no type")
        columns.append(Column(item.get("name"), spec, bool(item.get("required", True))))
    return ColumnSchema(tuple(columns))


def _param(item: dict[str, Any]) -> Param:
    shape = item.get("shape")
    return Param(str(item["name"]), str(item["type"]), item.get("default"),
                 tuple(int(dim) for dim in shape) if shape is not None else None)


def v2_signature(path: Path) -> ModelSignature:
    try:
        document = json.loads(path.read_bytes())
        inputs = tuple(_v2_tensor(item) for item in document["inputs"])
        outputs = tuple(_v2_tensor(item) for item in document.get("outputs") or ())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{path} is not a valid signature: {exc}") from exc
    return ModelSignature(TensorSchema(inputs), TensorSchema(outputs) if outputs else None,
                          source=SIGNATURE_JSON)


def _v2_tensor(item: dict[str, Any]) -> Tensor:
    datatype = item.get("datatype", "FP32")
    if datatype not in _V2_DTYPES:
        raise ValueError(f"unknown datatype {datatype!r}")
    shape = item.get("shape")
    return Tensor(str(item["name"]), _V2_DTYPES[datatype], tuple(int(d) for d in shape) if shape else None)


def _onnx_signature(path: Path) -> ModelSignature:
    try:
        import onnx
    except ImportError:  # the optional "optimize" extra; without it ONNX tools take the scoring body
        return UNKNOWN
    try:
        # Weights kept in external files are not needed for the graph's declared inputs and outputs.
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError... for a broken file
        raise SignatureError(f"cannot read the ONNX graph of {path}: {exc}") from exc
    initializers = {init.name for init in graph.initializer}
    inputs = tuple(_onnx_tensor(value) for value in graph.input if value.name not in initializers)
    outputs = tuple(_onnx_tensor(value) for value in graph.output)
    return ModelSignature(TensorSchema(inputs) if inputs else None,
                          TensorSchema(outputs) if outputs else None, source="ONNX graph")


def _onnx_tensor(value: Any) -> Tensor:
    tensor_type = value.type.tensor_type
    dtype = _ONNX_DTYPES.get(tensor_type.elem_type, "object")
    if not tensor_type.HasField("shape"):
        return Tensor(value.name, dtype, None)
    # A symbolic dimension (dim_param, e.g. "batch") or an unset one is any size.
    shape = tuple(dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim)
    return Tensor(value.name, dtype, shape)
