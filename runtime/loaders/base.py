"""What every loader returns: a model that predicts on ``Tensors``."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

from runtime.types import InputSchema, Params, Prediction, Tensors, TensorSpec

if TYPE_CHECKING:
    from runtime.optimize.types import OptimizationResult


class LoadedModel(abc.ABC):
    """A model ready to predict. ``predict`` is synchronous and called from one thread at a time.

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

    @abc.abstractmethod
    def predict(self, inputs: Tensors, params: Params | None = None) -> Prediction:
        """Run the model on already validated inputs."""

    def close(self) -> None:  # noqa: B027 - most models hold nothing that needs releasing
        """Release what the model holds (sessions, threads)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.flavor} {self.description}>"
