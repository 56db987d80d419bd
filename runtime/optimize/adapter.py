"""Serving a converted graph behind the MLflow protocol: request data in, the native answer out.

The replica hands models its requests as named arrays (one 1-D array per column of a column-based
signature, or named tensors). ``OnnxAdapter`` turns those into the graph's feeds and the graph's outputs
back into exactly what the native pyfunc ``predict`` returns (same type, dtype and shape), so the
replica renders both paths with the same code and clients cannot tell them apart. It holds no session:
whoever runs the graph (the replica's ONNX path, or :class:`OptimizedModel` here) calls ``feeds`` and
``answer`` around its own ``session.run``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from runtime.errors import InvalidInput
from runtime.optimize.types import AdapterSpec, FeedSpec
from runtime.types import Array


class OnnxSession(Protocol):
    """The part of ``onnxruntime.InferenceSession`` the adapter needs."""

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]) -> list[Any]: ...


class OnnxAdapter:
    def __init__(self, spec: AdapterSpec) -> None:
        self.spec = spec
        self._feed_dtypes = [np.dtype(feed.dtype) for feed in spec.feeds]
        self._output_dtype = np.dtype(spec.output.dtype)
        self.output_names = [spec.output.graph_output]

    def feeds(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Graph feeds for a request given as named 1-D columns or named tensors."""
        return {
            feed.graph_input: self._feed(feed, dtype, inputs)
            for feed, dtype in zip(self.spec.feeds, self._feed_dtypes, strict=True)
        }

    @staticmethod
    def _feed(feed: FeedSpec, dtype: np.dtype[Any], inputs: Mapping[str, Array]) -> Array:
        try:
            if feed.kind == "matrix":
                columns = [inputs[name] for name in feed.sources]
                matrix = np.empty((len(columns[0]), len(columns)), dtype=dtype)
                for index, column in enumerate(columns):
                    matrix[:, index] = column
                return matrix
            if feed.kind == "column":
                column = inputs[feed.sources[0]]
                if dtype.kind == "O":
                    return np.asarray(column, dtype=object).astype(str).astype(object).reshape(-1, 1)
                return np.asarray(column, dtype=dtype).reshape(-1, 1)
            tensor = inputs.get(feed.sources[0])
            if tensor is None and len(inputs) == 1:
                # A signature's single unnamed tensor: whatever name the request gave it.
                tensor = next(iter(inputs.values()))
            if tensor is None:
                raise KeyError(feed.sources[0])
            return np.asarray(tensor, dtype=dtype)
        except KeyError as exc:
            raise InvalidInput(
                f"missing input {exc.args[0]!r}; the model expects {list(feed.sources)}"
            ) from exc
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"input {list(feed.sources)} cannot be read as {dtype.name}: {exc}") from exc

    def answer(self, output: Array) -> Any:
        """The native answer (an array, or a data frame where the native model returns one), from the
        graph's ``spec.output.graph_output`` output."""
        answer = self.answer_array(output)
        columns = self.spec.output.frame_columns
        if columns is not None:
            import pandas as pd

            return pd.DataFrame(answer, columns=list(columns))
        return answer

    def answer_array(self, output: Array) -> Array:
        """The native answer's values: the graph output, column-selected, reshaped and cast."""
        spec = self.spec.output
        if spec.column is not None:
            output = output[:, spec.column]
        if spec.ndim == 1 and output.ndim == 2 and output.shape[1] == 1:
            output = output.reshape(-1)
        elif spec.frame_columns is not None and output.ndim == 1:
            output = output.reshape(-1, 1)
        return output.astype(self._output_dtype, copy=False)


class OptimizedModel:
    """A converted graph in its own ONNX Runtime session, answering like the native model."""

    def __init__(self, session: OnnxSession, spec: AdapterSpec) -> None:
        self.session = session
        self.adapter = OnnxAdapter(spec)

    @classmethod
    def load(cls, onnx_path: Path, spec: AdapterSpec, *, intra_op_threads: int = 1) -> OptimizedModel:
        return cls(open_session(onnx_path, intra_op_threads=intra_op_threads), spec)

    def predict(self, inputs: Mapping[str, Array]) -> Any:
        outputs = self.session.run(self.adapter.output_names, self.adapter.feeds(inputs))
        return self.adapter.answer(outputs[0])

    def run_outputs(self, inputs: Mapping[str, Array], names: Sequence[str]) -> list[Array]:
        """Raw graph outputs (verification compares scores the served answer does not carry)."""
        return list(self.session.run(list(names), self.adapter.feeds(inputs)))


def open_session(onnx_model: Path | bytes, *, intra_op_threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    # Converters declare static output shapes ORT warns about at every run ("expected shape {1}");
    # the adapter reshapes outputs itself, so only errors are worth logging.
    options.log_severity_level = 3
    source = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
