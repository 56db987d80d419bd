"""ONNX models through onnxruntime, tuned for latency on small machines.

This path must stay free of pandas and mlflow: a replica serving an ONNX model starts in well under a
second and spends its time per request in the model, not in conversions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from runtime.config import ReplicaSettings
from runtime.errors import InferenceError, InvalidInput, ModelLoadError
from runtime.loaders.base import LoadedModel
from runtime.types import Layout, Params, Prediction, Tensors, TensorSchema, TensorSpec

logger = logging.getLogger(__name__)

_ONNX_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(string)": np.dtype(object),
}


def _spec(node: Any) -> TensorSpec:
    dtype = _ONNX_TO_NUMPY.get(node.type)
    # Symbolic ("batch") and unknown (None) dimensions both accept any size.
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape)
    return TensorSpec(node.name, dtype, shape)


def session_options(settings: ReplicaSettings) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One request at a time through a small graph: sequential execution and a small intra-op pool
    # avoid thread wake-ups that cost more than the work; spinning threads would steal the core that
    # the HTTP side needs.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = settings.onnx_intra_op_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class OnnxModel(LoadedModel):
    flavor = "onnx"

    def __init__(self, path: Path, settings: ReplicaSettings) -> None:
        import onnxruntime as ort

        from runtime.devices import onnx_providers

        providers = onnx_providers(settings.device)
        try:
            session = ort.InferenceSession(str(path), sess_options=session_options(settings),
                                           providers=providers)
        except Exception as exc:  # onnxruntime raises its own (pybind) exception types
            raise ModelLoadError(f"cannot load ONNX model {path.name}: {exc}") from exc
        inputs = tuple(_spec(node) for node in session.get_inputs())
        unsupported = [node.name for node in session.get_inputs() if node.type not in _ONNX_TO_NUMPY]
        if unsupported:
            raise ModelLoadError(f"ONNX model {path.name} has inputs of unsupported types: {unsupported}")
        outputs = tuple(_spec(node) for node in session.get_outputs())
        super().__init__(input_schema=TensorSchema(inputs), output_specs=outputs, description=path.name)
        self._session = session
        self._output_names = [spec.name for spec in outputs]
        self._layout = Layout.SINGLE if len(outputs) == 1 else Layout.COLUMNS
        self._invalid_argument: type[Exception] = _invalid_argument_type()

    def predict(self, inputs: Tensors, params: Params | None = None) -> Prediction:
        try:
            results = self._session.run(self._output_names, inputs)
        except self._invalid_argument as exc:
            raise InvalidInput(f"the model rejected the input: {exc}") from exc
        except Exception as exc:
            raise InferenceError(f"ONNX inference failed: {exc}") from exc
        outputs: dict[str, Any] = {}
        for name, value in zip(self._output_names, results, strict=True):
            if not isinstance(value, np.ndarray):
                # Sequence/map outputs (e.g. a classifier's ZipMap) become an object array, one per row.
                boxed = np.empty(len(value), dtype=object)
                boxed[:] = value
                value = boxed
            outputs[name] = value
        return Prediction(outputs, self._layout)


def _invalid_argument_type() -> type[Exception]:
    try:
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument
    except ImportError:  # pragma: no cover - layout of onnxruntime's private module changed
        return ValueError
    invalid: type[Exception] = InvalidArgument
    return invalid
