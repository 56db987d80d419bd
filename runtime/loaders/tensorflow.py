"""TensorFlow models: a bare SavedModel directory (its ``serving_default`` signature) and MLflow's
``tensorflow`` flavor with a tensor signature (the Keras model called directly, not through the pyfunc).

TensorFlow is imported only here, only for such models (``pip install zeroserve[tensorflow]``:
``tensorflow-cpu`` on machines without a GPU). Its C++ start-up chatter is turned down before the import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from runtime.config import ReplicaSettings
from runtime.errors import InferenceError, InvalidInput, ModelLoadError
from runtime.loaders._mlmodel import MLmodelInfo
from runtime.loaders.base import LoadedModel, tensors_prediction
from runtime.types import Params, Prediction, Tensors, TensorSchema, TensorSpec


def import_tensorflow(settings: ReplicaSettings) -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ModelLoadError(
            "this is a TensorFlow model and TensorFlow is not installed here: pip install "
            "'zeroserve[tensorflow]'") from exc
    threads = max(1, settings.torch_threads)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already initialised in this process (a second model): keeps its first settings
    if settings.device == "cuda" and not tf.config.list_physical_devices("GPU"):
        raise ModelLoadError(
            "this replica was placed on a GPU, but TensorFlow here sees none (tensorflow-cpu?): install "
            "a CUDA build of tensorflow, or use workload_type CPU")
    return tf


class TensorFlowModel(LoadedModel):
    """A callable taking named tensors (a SavedModel signature, or a Keras model's one input)."""

    def __init__(
        self,
        call: Any,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        *,
        flavor: str,
        description: str,
        tf: Any,
        keyword: bool,
        example: dict[str, Any] | None = None,
    ) -> None:
        unsupported = [spec.name for spec in inputs if spec.dtype is not None and spec.dtype.kind == "O"]
        if unsupported:
            raise ModelLoadError(f"string inputs are not served for TensorFlow models: {unsupported}")
        super().__init__(input_schema=TensorSchema(inputs), output_specs=outputs, example=example,
                         description=description)
        self.flavor = flavor  # type: ignore[misc]  # one class serves two flavors
        self._call = call
        self._tf = tf
        self._keyword = keyword  # a signature takes its inputs by name; a Keras model positionally
        self._names = [spec.name for spec in inputs]

    def predict(self, inputs: Tensors, params: Params | None = None) -> Prediction:
        tf = self._tf
        tensors = {name: tf.constant(inputs[name]) for name in self._names}
        try:
            if self._keyword:
                result = self._call(**tensors)
            else:
                result = self._call(tensors[self._names[0]] if len(tensors) == 1 else list(tensors.values()),
                                    training=False)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
            raise InvalidInput(f"the model rejected the input: {str(exc).splitlines()[0]}") from exc
        except Exception as exc:
            raise InferenceError(f"TensorFlow inference failed: {exc}") from exc
        if isinstance(result, dict) and len(result) == 1:
            # A signature answers a dict even for its one output: that output is the single prediction.
            (result,) = result.values()
        return tensors_prediction(result, [spec.name for spec in self.output_specs], np.asarray,
                                  (tf.Tensor, np.ndarray))


def _spec(name: str, spec: Any) -> TensorSpec:
    shape = None if spec.shape.rank is None else tuple(-1 if dim is None else int(dim) for dim in spec.shape)
    return TensorSpec(name, np.dtype(spec.dtype.as_numpy_dtype), shape)


def is_saved_model(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").is_file()


def load_saved_model(directory: Path, settings: ReplicaSettings) -> TensorFlowModel:
    tf = import_tensorflow(settings)
    loaded = tf.saved_model.load(str(directory))
    signatures = dict(loaded.signatures)
    if not signatures:
        raise ModelLoadError(f"{directory.name}: the SavedModel has no signatures to serve")
    key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
    function = signatures[key]
    _, by_name = function.structured_input_signature
    inputs = tuple(_spec(name, spec) for name, spec in sorted(by_name.items()))
    outputs = tuple(_spec(name, spec) for name, spec in sorted(function.structured_outputs.items()))
    model = TensorFlowModel(function, inputs, outputs, flavor="tensorflow.saved_model",
                            description=f"{directory.name} ({key})", tf=tf, keyword=True)
    model._loaded = loaded  # type: ignore[attr-defined]  # the signature's variables live on it
    return model


def load_mlflow_tensorflow(directory: Path, info: MLmodelInfo, settings: ReplicaSettings) -> TensorFlowModel:
    """MLflow's tensorflow flavor holding a Keras model, served with its tensor signature."""
    tf = import_tensorflow(settings)
    if not isinstance(info.input_schema, TensorSchema):
        raise ModelLoadError(f"{directory.name}: the tensorflow flavor is served natively only with a tensor "
                             "signature")
    import keras

    flavor = info.flavors["tensorflow"]
    if flavor.get("model_type", "keras") != "keras":
        raise ModelLoadError(f"{directory.name}: only Keras models of the tensorflow flavor are served "
                             "natively")
    data = directory / str(flavor.get("data", "data"))
    files = sorted(data.glob("*.keras")) or sorted(data.glob("*.h5"))
    if not files:
        raise ModelLoadError(f"{directory.name}: no .keras file under {data.name}/")
    module = keras.models.load_model(str(files[0]), compile=False)
    return TensorFlowModel(module, info.input_schema.inputs, info.output_specs, flavor="mlflow.tensorflow",
                           description=directory.name, tf=tf, keyword=False, example=info.example)
