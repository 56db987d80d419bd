"""Types shared by the loaders, the protocols and the batcher.

Inside a replica every request becomes ``Tensors``: named numpy arrays that share a leading batch
dimension (for a column-based MLflow model, one 1-D array per column). That single shape is what makes
validation, batching and both wire protocols independent of the model's flavor.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np

Array: TypeAlias = np.ndarray[Any, Any]
Tensors: TypeAlias = dict[str, Array]
Params: TypeAlias = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named tensor input or output. ``shape`` uses -1 for a dimension of any size; ``None``
    means unknown (any rank). ``dtype`` ``None`` means: infer from the data (floats become float32)."""

    name: str
    dtype: np.dtype[Any] | None
    shape: tuple[int, ...] | None

    def describe(self) -> str:
        dtype = self.dtype.name if self.dtype is not None else "any"
        shape = list(self.shape) if self.shape is not None else "any"
        return f"{self.name!r} ({dtype}, shape {shape})"


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One column of a column-based (MLflow DataFrame) signature."""

    name: str
    dtype: np.dtype[Any]
    type_name: str  # the MLflow type ("double", "long", "string", ...), for messages and metadata
    required: bool = True
    # The signature's own label when it is an integer (a model trained on pd.DataFrame(X) has columns
    # 0, 1, 2): requests name the column by ``name`` (its text), the model gets its frame with ``label``.
    label: int | None = None


@dataclass(frozen=True, slots=True)
class TensorSchema:
    inputs: tuple[TensorSpec, ...]


@dataclass(frozen=True, slots=True)
class ColumnSchema:
    columns: tuple[ColumnSpec, ...]


# ``None``: the model declares no inputs (an MLflow model without signature); types are inferred.
InputSchema: TypeAlias = TensorSchema | ColumnSchema | None


class Layout(enum.Enum):
    """How a prediction is rendered as MLflow ``predictions``."""

    SINGLE = "single"  # one array: a (nested) list
    RECORDS = "records"  # a data frame: one object per row
    COLUMNS = "columns"  # several named arrays: an object of lists


@dataclass(slots=True)
class Prediction:
    """A model's answer: named arrays sharing the batch dimension of the request."""

    outputs: dict[str, Array]
    layout: Layout

    def rows(self) -> int | None:
        """The common leading dimension, or ``None`` when the outputs have none."""
        sizes = {value.shape[0] if value.ndim else -1 for value in self.outputs.values()}
        if len(sizes) != 1:
            return None
        size = sizes.pop()
        return size if size >= 0 else None


# MLflow's column types and the numpy dtypes that carry them.
MLFLOW_COLUMN_DTYPES: dict[str, np.dtype[Any]] = {
    "boolean": np.dtype(np.bool_),
    "integer": np.dtype(np.int32),
    "long": np.dtype(np.int64),
    "float": np.dtype(np.float32),
    "double": np.dtype(np.float64),
    "string": np.dtype(object),
    "binary": np.dtype(object),
    "datetime": np.dtype("datetime64[ns]"),
}

# Open Inference Protocol v2 datatypes.
V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
NUMPY_TO_V2: dict[np.dtype[Any], str] = {dtype: name for name, dtype in V2_TO_NUMPY.items()}


def v2_datatype(dtype: np.dtype[Any] | None) -> str:
    if dtype is None:
        return "FP32"
    if dtype.kind in "OUS":
        return "BYTES"
    return NUMPY_TO_V2.get(dtype, "BYTES")
