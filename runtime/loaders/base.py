"""What every loader returns: a model that predicts on ``Tensors``."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from runtime.errors import InferenceError
from runtime.payload import Payload
from runtime.types import Array, InputSchema, Layout, Params, Prediction, Tensors, TensorSpec
from runtime.validation import conform

if TYPE_CHECKING:
    from runtime.optimize.types import OptimizationResult


class LoadedModel(abc.ABC):
    """A model ready to predict. ``predict`` is synchronous and called from one thread at a time.

    A request reaches ``predict`` in two steps: ``conform`` validates its payload against
    ``input_schema`` (per request), then ``predict`` runs on those inputs, or on several requests'
    inputs merged along the batch dimension.

    ``predict`` raises ``runtime.errors.InvalidInput`` when the model itself rejects an input that passed
    schema validation (so that the batcher can retry the batch's requests one by one and only the
    offending request fails), and ``InferenceError`` for anything else.
    """

    flavor: ClassVar[str]

    def __init__(
        self,
        *,
        input_schema: InputSchema,
        output_specs: tuple[TensorSpec, ...] = (),
        example: dict[str, Any] | None = None,
        accepts_params: bool = False,
        description: str = "",
    ) -> None:
        self.input_schema = input_schema
        self.output_specs = output_specs
        # A request body (MLflow scoring format) that the model was saved with; used for warm-up.
        self.example = example
        self.accepts_params = accepts_params
        self.description = description
        # For an MLflow model: which path automatic optimization chose (ONNX or native) and why.
        # None for models that are not MLflow models, or whose own flavor is ONNX.
        self.optimization: OptimizationResult | None = None

    def conform(self, payload: Payload, *, allow_nan: bool) -> tuple[Tensors, int]:
        """The payload validated against ``input_schema``, as the inputs ``predict`` takes, and their
        rows (``UNBATCHABLE`` when they share none).

        Requests are merged for batching in this form, so a model that runs on other arrays than the
        schema's (one feature matrix rather than one array per column) builds them here, once per
        request, instead of merging many small arrays per batch.
        """
        return conform(payload, self.input_schema, allow_nan=allow_nan)

    @abc.abstractmethod
    def predict(self, inputs: Tensors, params: Params | None = None) -> Prediction:
        """Run the model on inputs made by ``conform`` (or merged from several of them)."""

    def close(self) -> None:  # noqa: B027 - most models hold nothing that needs releasing
        """Release what the model holds (sessions, threads)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.flavor} {self.description}>"


def tensors_prediction(
    result: Any, output_names: list[str], to_numpy: Callable[[Any], Array], tensor_types: tuple[type, ...]
) -> Prediction:
    """A tensor framework's answer (one tensor, a dict or a sequence of them) as a ``Prediction``: one
    tensor is the single output (named after the model's one output, else "predictions"); a dict's
    entries keep their names; a sequence takes the output names when they match in number."""
    if isinstance(result, tensor_types):
        name = output_names[0] if len(output_names) == 1 else "predictions"
        return Prediction({name: to_numpy(result)}, Layout.SINGLE)
    if isinstance(result, dict):
        return Prediction({str(key): to_numpy(value) for key, value in result.items()}, Layout.COLUMNS)
    if isinstance(result, list | tuple):
        names = output_names if len(output_names) == len(result) else [
            f"output_{position}" for position in range(len(result))]
        return Prediction({name: to_numpy(value) for name, value in zip(names, result, strict=True)},
                          Layout.COLUMNS)
    raise InferenceError(f"the model returned a {type(result).__name__}; expected tensors")
