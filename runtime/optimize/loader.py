"""The replica's optimized path: an MLflow model served from its verified ONNX graph.

``load_optimized`` is what the loader selection calls for an MLflow model before it falls back to the
native loaders. The model it returns is a ``LoadedModel`` like any other, so requests go through the same
validation (the MLflow signature), batching and protocols; the graph runs in an onnxruntime session made
with the replica's ONNX session options, and the answer is shaped into the same ``Prediction`` the
native pyfunc path would return.
"""

from __future__ import annotations

import logging
from pathlib import Path

from runtime.config import ReplicaSettings
from runtime.errors import InferenceError, InvalidInput, ModelLoadError
from runtime.loaders._mlmodel import MLmodelInfo
from runtime.loaders.base import LoadedModel
from runtime.optimize.adapter import OnnxAdapter
from runtime.optimize.optimizer import optimize_model
from runtime.optimize.types import OptimizationResult
from runtime.types import Layout, Params, Prediction, Tensors

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
        try:
            self._session = ort.InferenceSession(
                str(result.onnx_model_path),
                sess_options=session_options(settings),
                providers=["CPUExecutionProvider"],
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

    def predict(self, inputs: Tensors, params: Params | None = None) -> Prediction:
        feeds = self._adapter.feeds(inputs)
        try:
            (output,) = self._session.run(self._output_names, feeds)
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


def _invalid_argument_type() -> type[Exception]:
    try:
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument
    except ImportError:  # pragma: no cover - layout of onnxruntime's private module changed
        return ValueError
    invalid: type[Exception] = InvalidArgument
    return invalid
