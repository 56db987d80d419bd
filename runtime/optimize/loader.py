"""The replica's optimized path: an MLflow model served from its verified ONNX graph.

``load_optimized`` is what the loader selection calls for an MLflow model before it falls back to the
native loaders. The model it returns is a ``LoadedModel`` like any other, so requests go through the same
validation (the MLflow signature), batching and protocols; the graph runs in an onnxruntime session made
with the replica's ONNX session options, and the answer is shaped into the same ``Prediction`` the
native pyfunc path would return.

Requests become the graph's feeds in ``conform``, once per request: batching then merges one feature
matrix per request instead of one small array per column (twenty columns cost twenty concatenations per
batch, and a batch key over twenty arrays per request), and a ``dataframe_split`` request of same-typed
float columns in signature order is read straight into that matrix.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from runtime.config import ReplicaSettings
from runtime.errors import InferenceError, InvalidInput, ModelLoadError
from runtime.loaders._mlmodel import MLmodelInfo
from runtime.loaders.base import LoadedModel
from runtime.optimize.adapter import OnnxAdapter
from runtime.optimize.optimizer import optimize_model
from runtime.optimize.types import AdapterSpec, OptimizationResult
from runtime.payload import Payload
from runtime.types import ColumnSchema, InputSchema, Layout, Params, Prediction, Tensors
from runtime.validation import conform, to_array

log = logging.getLogger("zeroserve.optimize")


def load_optimized(
    directory: Path, info: MLmodelInfo, settings: ReplicaSettings, *, cache_dir: Path | None = None
) -> tuple[LoadedModel | None, OptimizationResult]:
    """The optimized model for the MLflow model in ``directory`` (None to serve it natively), and the
    decision: which path and why (the caller attaches it to the native model it loads instead).

    Logs which path the replica runs and why. Raises ``ModelLoadError`` when optimization is
    ``"required"`` and the model cannot be served as a verified graph.
    """
    mode = settings.optimization
    model: LoadedModel | None = None
    try:
        if mode != "off" and info.has_params:
            # Inference params can change what a pyfunc computes; a graph converted without them cannot.
            reason = "the model's signature takes inference params"
            if mode == "required":
                raise ModelLoadError(
                    f"optimization is required but the model cannot be served as ONNX: {reason}"
                )
            result = OptimizationResult(path="native", reason=reason, mode=mode)
        else:
            if cache_dir is None:
                from runtime.store.settings import StoreSettings

                cache_dir = StoreSettings().cache_dir
            result = optimize_model(
                directory, mode=mode, cache_dir=cache_dir, rtol=settings.optimization_rtol
            )
        if result.path == "onnx":
            model = OptimizedMlflowModel(result, info, settings)
    except Exception as exc:
        if mode == "required":
            if isinstance(exc, ModelLoadError):
                raise
            raise ModelLoadError(f"optimization is required but failed: {type(exc).__name__}: {exc}") from exc
        # "auto" never costs a deployment: whatever went wrong, the native flavor still serves.
        reason = f"optimization failed: {type(exc).__name__}: {exc}"
        result = OptimizationResult(path="native", reason=reason, mode=mode, flavor="unknown")
    # A fallback the user did not ask for is worth their attention; the other outcomes are routine.
    level = logging.WARNING if result.path == "native" and mode == "auto" and result.flavor else logging.INFO
    log.log(level, "model %s: %s", directory.name, result.describe())
    return model, result


class OptimizedMlflowModel(LoadedModel):
    flavor = "mlflow.onnx"

    def __init__(self, result: OptimizationResult, info: MLmodelInfo, settings: ReplicaSettings) -> None:
        import onnxruntime as ort

        from runtime.loaders.onnx import session_options

        if result.onnx_model_path is None or result.adapter is None:
            raise ModelLoadError("an optimization result without a graph cannot be served")
        from runtime.devices import onnx_providers

        providers = onnx_providers(settings.device)
        try:
            self._session = ort.InferenceSession(
                result.onnx_model if result.onnx_model is not None else str(result.onnx_model_path),
                sess_options=session_options(settings),
                providers=providers,
            )
        except Exception as exc:  # onnxruntime raises its own (pybind) exception types
            raise ModelLoadError(f"cannot load the converted graph {result.onnx_model_path}: {exc}") from exc
        super().__init__(
            input_schema=info.input_schema,
            output_specs=info.output_specs,
            example=info.example,
            # MLflow ignores params a model's signature does not declare, and so does this path
            # (models that declare params are not optimized).
            accepts_params=True,
            description=f"{result.onnx_model_path.parent.name[:12]} ({result.describe()})",
        )
        self.optimization = result
        self._adapter = OnnxAdapter(result.adapter)
        self._output_names = self._adapter.output_names
        self._frame_columns = result.adapter.output.frame_columns
        # The native pyfunc path names a single array answer after the signature's only output.
        self._answer_name = info.output_specs[0].name if len(info.output_specs) == 1 else "predictions"
        self._invalid_argument = _invalid_argument_type()
        self._block = _BlockInput.of(result.adapter, info.input_schema)

    def conform(self, payload: Payload, *, allow_nan: bool) -> tuple[Tensors, int]:
        """The graph's feeds for a request (``predict`` takes feeds, not the signature's columns)."""
        if self._block is not None and payload.split is not None:
            fast = self._block.read(payload.split, allow_nan)
            if fast is not None:
                return fast
        inputs, rows = conform(payload, self.input_schema, allow_nan=allow_nan)
        return self._adapter.feeds(inputs), rows

    def predict(self, inputs: Tensors, params: Params | None = None) -> Prediction:
        try:
            (output,) = self._session.run(self._output_names, inputs)
        except self._invalid_argument as exc:
            raise InvalidInput(f"the model rejected the input: {exc}") from exc
        except Exception as exc:
            raise InferenceError(f"ONNX inference failed: {exc}") from exc
        answer = self._adapter.answer_array(output)
        if self._frame_columns is not None:
            # The native answer is a data frame: one output per column, rendered as records.
            return Prediction(
                {str(name): answer[:, index] for index, name in enumerate(self._frame_columns)},
                Layout.RECORDS,
            )
        return Prediction({self._answer_name: answer}, Layout.SINGLE)


class _BlockInput:
    """A graph fed one matrix of same-typed float columns, read from ``dataframe_split`` rows at once.

    It takes only requests whose columns are exactly the signature's, in its order (or unnamed), and
    reads them as validation's own fast path for such frames does (one ``asarray`` of the rows, one
    NaN check), so the matrix is the one ``OnnxAdapter.feeds`` would stack from the validated columns,
    to the bit. Anything else (other column orders, records, ragged or non-numeric rows) returns None
    and goes through full validation, which also words every error.
    """

    def __init__(self, graph_input: str, names: list[str], dtype: np.dtype[Any], feed: np.dtype[Any]) -> None:
        self.graph_input = graph_input
        self.names = names
        self.dtype = dtype  # the signature's column type, which validation converts to
        self.feed = feed  # the graph input's type

    @classmethod
    def of(cls, spec: AdapterSpec, schema: InputSchema) -> _BlockInput | None:
        if len(spec.feeds) != 1 or spec.feeds[0].kind != "matrix" or not isinstance(schema, ColumnSchema):
            return None
        feed, columns = spec.feeds[0], schema.columns
        dtype = columns[0].dtype
        if (
            dtype.kind != "f"
            or any(column.dtype != dtype or not column.required for column in columns)
            or tuple(column.name for column in columns) != feed.sources
        ):
            return None
        return cls(feed.graph_input, list(feed.sources), dtype, np.dtype(feed.dtype))

    def read(self, split: tuple[list[str] | None, list[Any]], allow_nan: bool) -> tuple[Tensors, int] | None:
        columns, rows = split
        if columns is not None and columns != self.names:
            return None
        try:
            block = np.asarray(rows, dtype=self.dtype)
        except (ValueError, TypeError):
            return None
        if block.ndim != 2 or block.shape[1] != len(self.names):
            return None
        to_array(block, self.dtype, "data", allow_nan=allow_nan)  # NaN check, worded as validation's
        return {self.graph_input: block.astype(self.feed, copy=False)}, block.shape[0]


def _invalid_argument_type() -> type[Exception]:
    try:
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument
    except ImportError:  # pragma: no cover - layout of onnxruntime's private module changed
        return ValueError
    invalid: type[Exception] = InvalidArgument
    return invalid
