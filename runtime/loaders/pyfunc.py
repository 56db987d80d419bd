"""MLflow models of any flavor, through ``mlflow.pyfunc`` (imported only when such a model is served)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import InferenceError, InvalidInput
from runtime.loaders._imports import quiet_import
from runtime.loaders._mlmodel import MLmodelInfo
from runtime.loaders.base import LoadedModel
from runtime.types import ColumnSchema, Layout, Params, Prediction, Tensors, TensorSchema

logger = logging.getLogger(__name__)

# MLflow's error codes that mean "the input was wrong", as its own scoring server answers them.
_INPUT_ERROR_CODES = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE"})


class PyfuncModel(LoadedModel):
    flavor = "mlflow.pyfunc"

    def __init__(self, path: Path, info: MLmodelInfo) -> None:
        pyfunc = quiet_import("mlflow.pyfunc")
        self._pd = quiet_import("pandas")
        self._mlflow_exception = quiet_import("mlflow.exceptions").MlflowException
        with warnings.catch_warnings(record=True) as caught:
            # Warnings about how the model was authored (missing type hints, library versions) go to
            # the replica's log rather than to stderr or, where warnings are errors, a failed load.
            warnings.simplefilter("always")
            self._model = pyfunc.load_model(str(path))
        for warning in caught:
            logger.warning("loading %s: %s", path.name, str(warning.message).strip())
        loader = info.flavors.get("python_function", {}).get("loader_module", "mlflow.pyfunc.model")
        super().__init__(
            input_schema=info.input_schema,
            output_specs=info.output_specs,
            example=info.example,
            accepts_params=True,
            description=f"{path.name} ({loader})",
        )
        self._unnamed_tensor = info.unnamed_tensor
        # With a column signature, requests are validated (types, required columns, order) before they
        # get here, and MLflow's own schema enforcement would redo that work on every call (it costs
        # more than a small model's prediction). The flavor's predict behind PyFuncModel is then called
        # directly; params, and models without a column signature, go through PyFuncModel.predict.
        impl = getattr(self._model, "_model_impl", None)
        self._validated_predict: Any = None
        if isinstance(info.input_schema, ColumnSchema) and impl is not None and hasattr(impl, "predict"):
            self._validated_predict = impl.predict
        schema = info.input_schema
        self._labels = ({column.name: column.label for column in schema.columns if column.label is not None}
                        if isinstance(schema, ColumnSchema) else {})
        self._uniform_float = (
            isinstance(schema, ColumnSchema)
            and len({column.dtype for column in schema.columns}) == 1
            and schema.columns[0].dtype.kind == "f"
        )

    def predict(self, inputs: Tensors, params: Params | None = None) -> Prediction:
        data = self._model_input(inputs)
        try:
            if params:
                result = self._model.predict(data, params=dict(params))
            elif self._validated_predict is not None:
                result = self._validated_predict(data)
            else:
                result = self._model.predict(data)
        except self._mlflow_exception as exc:
            if exc.error_code in _INPUT_ERROR_CODES:
                raise InvalidInput(exc.message) from exc
            raise InferenceError(f"the model failed: {exc.message}") from exc
        except (ValueError, TypeError, KeyError) as exc:
            # MLflow's scoring server answers errors raised by predict as bad requests, and so do we.
            raise InvalidInput(f"the model rejected the input: {exc}") from exc
        except Exception as exc:
            raise InferenceError(f"the model failed: {type(exc).__name__}: {exc}") from exc
        return self._prediction(result)

    def _model_input(self, inputs: Tensors) -> Any:
        schema = self.input_schema
        if isinstance(schema, TensorSchema):
            if self._unnamed_tensor and len(inputs) == 1:
                return next(iter(inputs.values()))
            return inputs
        if schema is None:
            if set(inputs) == {""}:
                return inputs[""]
            if not all(array.ndim == 1 for array in inputs.values()):
                return inputs
        if self._uniform_float and len(inputs) > 1:
            # One 2-D block makes a single-block DataFrame: far cheaper than one block per column.
            frame = self._pd.DataFrame(
                np.column_stack(list(inputs.values())), columns=list(inputs), copy=False
            )
        else:
            frame = self._pd.DataFrame(inputs, copy=False)
        if self._labels:
            # A signature with integer column labels (a model trained on pd.DataFrame(X)): the model,
            # and MLflow's own schema check, know its columns as integers.
            frame.columns = [self._labels.get(name, name) for name in frame.columns]
        return frame

    def _prediction(self, result: Any) -> Prediction:
        pd = self._pd
        if isinstance(result, pd.DataFrame):
            return Prediction({str(name): result[name].to_numpy() for name in result.columns}, Layout.RECORDS)
        if isinstance(result, pd.Series):
            return Prediction({str(result.name or "predictions"): result.to_numpy()}, Layout.SINGLE)
        if isinstance(result, dict):
            return Prediction({str(name): _array(value) for name, value in result.items()}, Layout.COLUMNS)
        name = self.output_specs[0].name if len(self.output_specs) == 1 else "predictions"
        return Prediction({name: _array(result)}, Layout.SINGLE)


def _array(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except ValueError:  # ragged lists
        boxed = np.empty(len(value), dtype=object)
        boxed[:] = list(value)
        return boxed
