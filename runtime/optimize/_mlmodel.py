"""Reading what optimization needs from an MLflow model directory's ``MLmodel`` file, without MLflow.

A replica that finds a verified conversion in the cache never imports MLflow; these few fields
(flavors, signature, the pyfunc predict function) are all it takes to decide what to convert.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from runtime.types import MLFLOW_COLUMN_DTYPES, ColumnSchema, ColumnSpec, TensorSchema, TensorSpec

# The flavors we can convert, in the order we look for them: a model logged with several flavors is
# converted from the most specific one.
CONVERTIBLE_FLAVORS: tuple[str, ...] = ("sklearn", "xgboost", "lightgbm", "pytorch", "tensorflow")


class NotConvertible(Exception):
    """The model cannot be converted; the message is the reason recorded for the fallback."""


@dataclass(frozen=True)
class MLmodelInfo:
    flavors: dict[str, dict[str, Any]]
    inputs: ColumnSchema | TensorSchema | None
    predict_fn: str  # the pyfunc's predict function ("predict", "predict_proba", ...)
    has_input_example: bool

    @property
    def flavor(self) -> str | None:
        """The flavor to convert from, or None if no convertible flavor serves the pyfunc."""
        loader = str(self.flavors.get("python_function", {}).get("loader_module", ""))
        for name in CONVERTIBLE_FLAVORS:
            # The pyfunc must be the flavor's own: a custom pyfunc wrapping, say, a sklearn model may
            # post-process its output, which a converted graph would silently skip.
            if name in self.flavors and loader == f"mlflow.{name}":
                return name
        return None


def read_mlmodel(model_dir: Path) -> MLmodelInfo:
    path = model_dir / "MLmodel"
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise NotConvertible(f"{model_dir} has no MLmodel file: not an MLflow model") from exc
    except yaml.YAMLError as exc:
        raise NotConvertible(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise NotConvertible(f"{path} is not an MLflow model description")
    flavors = document.get("flavors") or {}
    pyfunc = flavors.get("python_function") or {}
    signature = document.get("signature") or {}
    return MLmodelInfo(
        flavors={str(name): dict(conf or {}) for name, conf in flavors.items()},
        inputs=parse_inputs(signature.get("inputs")),
        predict_fn=str(pyfunc.get("predict_fn") or "predict"),
        has_input_example=bool(document.get("saved_input_example_info")),
    )


def parse_inputs(raw: str | None) -> ColumnSchema | TensorSchema | None:
    """The signature's input schema (MLflow stores it as a JSON string inside the YAML)."""
    if not raw:
        return None
    specs = json.loads(raw)
    if not isinstance(specs, list) or not specs:
        return None
    if all(spec.get("type") == "tensor" for spec in specs):
        tensors = []
        for index, spec in enumerate(specs):
            tensor = spec.get("tensor-spec", {})
            shape = tensor.get("shape")
            tensors.append(
                TensorSpec(
                    name=str(spec.get("name") or f"input_{index}"),
                    dtype=np.dtype(tensor["dtype"]),
                    shape=None if shape is None else tuple(int(dim) for dim in shape),
                )
            )
        return TensorSchema(inputs=tuple(tensors))
    columns = []
    for index, spec in enumerate(specs):
        type_name = str(spec.get("type"))
        dtype = MLFLOW_COLUMN_DTYPES.get(type_name)
        if dtype is None:
            # Arrays, objects, maps: structured columns no converter takes.
            raise NotConvertible(f"input column {spec.get('name', index)!r} has type {type_name!r}")
        columns.append(
            ColumnSpec(
                name=str(spec.get("name", index)),
                dtype=dtype,
                type_name=type_name,
                required=bool(spec.get("required", True)),
            )
        )
    return ColumnSchema(columns=tuple(columns))
