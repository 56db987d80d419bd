"""Per-flavor conversion to ONNX: scikit-learn (skl2onnx), XGBoost and LightGBM (onnxmltools), PyTorch
(torch.onnx), TensorFlow/Keras (tf2onnx).

A flavor offers a list of :class:`Attempt` s, most exact first (a float64 graph before a float32 one);
the optimizer builds and verifies them in order and serves the first that answers like the native
model. Building an attempt may raise anything (an unsupported estimator, an operator the exporter
lacks): that is recorded as the attempt's reason and the next one is tried.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.optimize._mlmodel import MLmodelInfo, NotConvertible
from runtime.optimize.types import FeedSpec
from runtime.types import Array, ColumnSchema, TensorSchema

# Distributions whose versions decide a flavor's conversion (and so key its cached graph).
CONVERTER_PACKAGES: dict[str, tuple[str, ...]] = {
    "sklearn": ("skl2onnx", "scikit-learn"),
    "xgboost": ("onnxmltools", "xgboost"),
    "lightgbm": ("onnxmltools", "lightgbm"),
    "pytorch": ("torch", "onnxscript"),
    "tensorflow": ("tf2onnx", "tensorflow"),
}
CONVERTER_NAMES = {
    "sklearn": "skl2onnx",
    "xgboost": "onnxmltools",
    "lightgbm": "onnxmltools",
    "pytorch": "torch.onnx",
    "tensorflow": "tf2onnx",
}


@dataclass(frozen=True)
class Candidate:
    """A built graph and how to serve it; the optimizer completes the output spec from native answers."""

    onnx_bytes: bytes
    feeds: tuple[FeedSpec, ...]
    graph_output: str  # the output that carries the served answer
    column: int | None = None  # keep only this column of it
    scores_output: str | None = None  # a graph output to compare with ``native_scores``
    native_scores: Callable[[Any], Array] | None = None  # the native model's scores for the same input


@dataclass(frozen=True)
class Attempt:
    label: str  # e.g. "float64 matrix input"
    build: Callable[[], Candidate]


def attempts(flavor: str, raw_model: Any, info: MLmodelInfo) -> list[Attempt]:
    if flavor == "sklearn":
        return _sklearn_attempts(raw_model, info)
    if flavor in ("xgboost", "lightgbm"):
        return _gbm_attempts(flavor, raw_model, info)
    if flavor == "pytorch":
        return _torch_attempts(raw_model, info)
    if flavor == "tensorflow":
        return _tensorflow_attempts(raw_model, info)
    raise NotConvertible(f"no converter for the {flavor!r} flavor")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Converters warn and print freely; none of that is a failure, and none of it belongs on stdout."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# ---- request layouts ------------------------------------------------------------------------------------


def _matrix_feed(info: MLmodelInfo, dtype: np.dtype[Any], graph_input: str = "input") -> FeedSpec:
    schema = info.inputs
    if isinstance(schema, ColumnSchema):
        for column in schema.columns:
            if column.dtype.kind not in "iufb":
                raise NotConvertible(f"column {column.name!r} is {column.type_name}, not numeric")
        return FeedSpec(graph_input, "matrix", tuple(c.name for c in schema.columns), dtype.str)
    if isinstance(schema, TensorSchema) and len(schema.inputs) == 1:
        tensor = schema.inputs[0]
        if tensor.shape is None or len(tensor.shape) != 2:
            raise NotConvertible(f"input tensor {tensor.describe()} is not a [rows, features] matrix")
        return FeedSpec(graph_input, "tensor", (tensor.name,), dtype.str)
    raise NotConvertible("the signature has several input tensors; only one [rows, features] input converts")


def _feature_count(info: MLmodelInfo) -> int:
    schema = info.inputs
    if isinstance(schema, ColumnSchema):
        return len(schema.columns)
    if isinstance(schema, TensorSchema) and schema.inputs[0].shape is not None:
        return int(np.prod(schema.inputs[0].shape[1:]))
    raise NotConvertible("the input signature gives no feature count")


# ---- scikit-learn -----------------------------------------------------------------------------------------


def _sklearn_attempts(model: Any, info: MLmodelInfo) -> list[Attempt]:
    if info.predict_fn not in ("predict", "predict_proba"):
        raise NotConvertible(f"pyfunc predict function {info.predict_fn!r} has no converted equivalent")
    schema = info.inputs
    numeric = isinstance(schema, TensorSchema) or (
        isinstance(schema, ColumnSchema) and all(c.dtype.kind in "iufb" for c in schema.columns)
    )
    if numeric:
        # Linear models and scalers compute in float64 in scikit-learn, so a float64 graph matches them
        # exactly; trees compare float32 features, and a float64 tree graph breaks probability ties
        # (0.5 : 0.5) the other way, so for those the float32 graph comes first.
        dtypes = (np.float32, np.float64) if _is_tree_model(model) else (np.float64, np.float32)
        return [_sklearn_matrix_attempt(model, info, np.dtype(dtype)) for dtype in dtypes]
    if not isinstance(schema, ColumnSchema):
        raise NotConvertible("the model has no input signature")
    column_feeds = _column_feeds(schema)
    return [Attempt("one input per column", lambda: _sklearn_build(model, info, column_feeds))]


def _sklearn_matrix_attempt(model: Any, info: MLmodelInfo, dtype: np.dtype[Any]) -> Attempt:
    return Attempt(
        f"{dtype.name} matrix input", lambda: _sklearn_build(model, info, [_matrix_feed(info, dtype)])
    )


def _final_estimator(model: Any) -> Any:
    while hasattr(model, "_final_estimator"):
        model = model._final_estimator
    return model


def _is_tree_model(model: Any) -> bool:
    module = type(_final_estimator(model)).__module__
    return module.startswith(("sklearn.tree", "sklearn.ensemble"))


def _column_feeds(schema: ColumnSchema) -> list[FeedSpec]:
    # Mixed-type frames (a ColumnTransformer over numbers and strings) take one [rows, 1] input per
    # column, named like the column so that the transformer's column selectors resolve.
    graph_dtypes: dict[str, type[np.generic]] = {
        "f": np.float64,
        "i": np.int64,
        "u": np.int64,
        "b": np.bool_,
        "O": np.object_,
    }
    feeds = []
    for column in schema.columns:
        dtype: np.dtype[Any]
        if column.dtype.kind == "f" and column.dtype.itemsize == 4:
            dtype = np.dtype(np.float32)
        else:
            dtype = np.dtype(graph_dtypes.get(column.dtype.kind, np.object_))
        feeds.append(FeedSpec(column.name, "column", (column.name,), dtype.str))
    return feeds


def _sklearn_build(model: Any, info: MLmodelInfo, feeds: list[FeedSpec]) -> Candidate:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import (
        BooleanTensorType,
        DoubleTensorType,
        FloatTensorType,
        Int64TensorType,
        StringTensorType,
    )
    from sklearn.base import is_classifier, is_regressor

    types = {"f8": DoubleTensorType, "f4": FloatTensorType, "i8": Int64TensorType, "b1": BooleanTensorType}
    initial_types = []
    for feed in feeds:
        dtype = np.dtype(feed.dtype)
        tensor_type = StringTensorType if dtype.kind == "O" else types[f"{dtype.kind}{dtype.itemsize}"]
        width = len(feed.sources) if feed.kind == "matrix" else 1
        if feed.kind == "tensor":
            width = _feature_count(info)
        initial_types.append((feed.graph_input, tensor_type([None, width])))
    classifier = is_classifier(model)
    final = _final_estimator(model)
    # ZipMap turns probabilities into a list of dicts; the served answer and the comparison want a matrix.
    options = {type(final): {"zipmap": False}} if classifier else None
    with quiet():
        onnx_model = convert_sklearn(model, initial_types=initial_types, options=options)
    outputs = [output.name for output in onnx_model.graph.output]
    if classifier:
        served = "probabilities" if info.predict_fn == "predict_proba" else "label"
        return Candidate(
            onnx_model.SerializeToString(),
            tuple(feeds),
            served,
            scores_output="probabilities" if "probabilities" in outputs else None,
            native_scores=model.predict_proba if hasattr(model, "predict_proba") else None,
        )
    if info.predict_fn != "predict":
        raise NotConvertible(f"{type(model).__name__} has no {info.predict_fn}")
    served = "variable" if is_regressor(model) and "variable" in outputs else outputs[0]
    return Candidate(onnx_model.SerializeToString(), tuple(feeds), served)


# ---- XGBoost and LightGBM -------------------------------------------------------------------------------


def _gbm_attempts(flavor: str, model: Any, info: MLmodelInfo) -> list[Attempt]:
    # onnxmltools builds float32 tree ensembles only.
    return [Attempt("float32 matrix input", lambda: _gbm_build(flavor, model, info))]


def _gbm_build(flavor: str, model: Any, info: MLmodelInfo) -> Candidate:
    from onnxmltools.convert.common.data_types import FloatTensorType

    feed = _matrix_feed(info, np.dtype(np.float32))
    initial_types = [(feed.graph_input, FloatTensorType([None, _feature_count(info)]))]
    served, column, scores = _gbm_outputs(flavor, model)
    with quiet():
        if flavor == "xgboost":
            from onnxmltools import convert_xgboost

            onnx_model = convert_xgboost(_unnamed_features(model), initial_types=initial_types)
        else:
            from onnxmltools import convert_lightgbm

            onnx_model = convert_lightgbm(model, initial_types=initial_types, zipmap=False)
    native_scores = getattr(model, "predict_proba", None) if scores else None
    return Candidate(onnx_model.SerializeToString(), (feed,), served, column, scores, native_scores)


# XGBoost ("reg:squarederror", "count:poisson", "survival:cox") and LightGBM ("regression", "huber", ...).
_REGRESSION_OBJECTIVES = (
    "reg",
    "count",
    "survival",
    "huber",
    "fair",
    "poisson",
    "quantile",
    "mape",
    "gamma",
    "tweedie",
    "l1",
    "l2",
)


def _unnamed_features(model: Any) -> Any:
    """A copy of an XGBoost model whose trees name features f0, f1, ...

    onnxmltools reads feature indices from the tree dump, which uses the training frame's column names
    when there were any; the graph takes a positional matrix, so positional names are what it needs.
    """
    import copy

    copied = copy.deepcopy(model)
    booster = copied.get_booster() if hasattr(copied, "get_booster") else copied
    booster.feature_names = None
    booster.feature_types = None
    return copied


def _gbm_outputs(flavor: str, model: Any) -> tuple[str, int | None, str | None]:
    """(served output, column of it, scores output) for a booster or its scikit-learn wrapper.

    The wrappers' pyfunc answers with ``predict`` (labels or values); a bare booster answers with its raw
    prediction, whose meaning depends on the objective: P(class 1) for a binary objective, class
    probabilities for a multi-class one, values for regression.
    """
    if hasattr(model, "predict_proba"):
        return "label", None, "probabilities"
    if hasattr(model, "get_params"):  # a scikit-learn regressor wrapper
        return "variable", None, None
    if flavor == "xgboost":
        import json

        objective = json.loads(model.save_config())["learner"]["objective"]["name"]
    else:
        objective = str(model.params.get("objective", "regression"))
    if objective.startswith("binary"):
        return "probabilities", 1, None
    if objective in ("multi:softprob", "multiclass", "softmax", "multiclassova"):
        return "probabilities", None, None
    if objective.startswith(_REGRESSION_OBJECTIVES):
        return "variable", None, None
    raise NotConvertible(f"{flavor} booster objective {objective!r} has no converted equivalent")


# ---- PyTorch ----------------------------------------------------------------------------------------------


def _torch_attempts(model: Any, info: MLmodelInfo) -> list[Attempt]:
    # The pyfunc feeds the network float32 when the request is a data frame, and the request tensor's own
    # dtype otherwise.
    schema = info.inputs
    tensor = schema.inputs[0] if isinstance(schema, TensorSchema) and len(schema.inputs) == 1 else None
    if tensor is not None and tensor.dtype is not None:
        if tensor.shape is None or len(tensor.shape) < 2:
            raise NotConvertible(f"input tensor {tensor.describe()} has no batch dimension")
        feed = FeedSpec("input", "tensor", (tensor.name,), tensor.dtype.str)
        example_shape: tuple[int, ...] = tensor.shape[1:]
    else:
        feed = _matrix_feed(info, np.dtype(np.float32))
        example_shape = (_feature_count(info),)
    return [
        Attempt(f"torch.onnx export ({feed.kind} input)", lambda: _torch_build(model, feed, example_shape))
    ]


def _torch_build(model: Any, feed: FeedSpec, example_shape: tuple[int, ...]) -> Candidate:
    import torch

    # torch.export specializes batch sizes 0 and 1, so the traced example has a few rows.
    example = torch.zeros((4, *example_shape), dtype=getattr(torch, np.dtype(feed.dtype).name))
    with quiet():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            verbose=False,
            input_names=[feed.graph_input],
            output_names=["output"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    if program is None:
        raise NotConvertible("torch.onnx.export produced no program")
    return Candidate(program.model_proto.SerializeToString(), (feed,), "output")


# ---- TensorFlow / Keras -----------------------------------------------------------------------------------


def _tensorflow_attempts(model: Any, info: MLmodelInfo) -> list[Attempt]:
    schema = info.inputs
    tensor = schema.inputs[0] if isinstance(schema, TensorSchema) and len(schema.inputs) == 1 else None
    if tensor is None or tensor.dtype is None:
        raise NotConvertible("only a Keras model with one typed input tensor converts")
    if tensor.shape is None or len(tensor.shape) < 2:
        raise NotConvertible(f"input tensor {tensor.describe()} has no batch dimension")
    feed = FeedSpec("input", "tensor", (tensor.name,), tensor.dtype.str)
    shape = tensor.shape
    return [Attempt("tf2onnx (tensor input)", lambda: _tensorflow_build(model, feed, shape))]


def _tensorflow_build(model: Any, feed: FeedSpec, shape: tuple[int, ...]) -> Candidate:
    import tensorflow as tf
    import tf2onnx

    # The Keras model is traced as a function of one batch-dynamic tensor: what the replica calls natively.
    spec = tf.TensorSpec((None, *(None if dim < 0 else dim for dim in shape[1:])),
                         tf.as_dtype(np.dtype(feed.dtype)), name=feed.graph_input)
    function = tf.function(lambda batch: model(batch, training=False), input_signature=[spec])
    with quiet():
        proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=17)
    if not proto.graph.output:
        raise NotConvertible("tf2onnx produced a graph without outputs")
    return Candidate(proto.SerializeToString(), (feed,), proto.graph.output[0].name)
