"""Running the native model and a converted graph side by side before the graph is trusted.

Both answer the same requests, given the way the replica gives them: the native pyfunc gets a data
frame (column signatures) or the tensor (tensor signatures), the graph gets the named arrays the replica
holds. Compared are the full verification sample (input example first), a few single-row requests
(reshaping bugs hide at batch size one), and, for classifiers, the class probabilities behind the labels.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.optimize._mlmodel import MLmodelInfo, NotConvertible
from runtime.optimize.adapter import OptimizedModel, open_session
from runtime.optimize.converters import Candidate, attempts, quiet
from runtime.optimize.sample import column_sample, tensor_sample
from runtime.optimize.types import AdapterSpec, OutputSpec, Verification
from runtime.optimize.verify import Comparison, compare_answers, compare_arrays
from runtime.types import Array, ColumnSchema, TensorSchema

log = logging.getLogger("zeroserve.optimize")

SINGLE_ROW_CHECKS = 3
_REASON_CHARS = 400


@dataclass
class NativeModel:
    info: MLmodelInfo
    pyfunc: Any
    raw: Any  # the flavor's own object (estimator, booster, module) that converters take
    example: dict[str, Array] | None

    @classmethod
    def load(cls, model_dir: Path, info: MLmodelInfo) -> NativeModel:
        import mlflow.pyfunc
        from mlflow.models import Model

        with quiet():
            pyfunc = mlflow.pyfunc.load_model(str(model_dir))
            raw = pyfunc.get_raw_model()
            try:
                example_data = Model.load(str(model_dir)).load_input_example(str(model_dir))
            except Exception as exc:  # an unreadable example only means fewer rows are compared
                log.warning("optimization: the input example of %s did not load: %s", model_dir, exc)
                example_data = None
        return cls(info, pyfunc, raw, _example_arrays(info, example_data))

    def predict(self, inputs: dict[str, Array]) -> Any:
        """The native answer for a request held as named arrays."""
        schema = self.info.inputs
        if self.info.flavor == "pytorch" and isinstance(schema, TensorSchema) and len(schema.inputs) == 1:
            # The replica serves a tensor-signature PyTorch model with torch directly, not through the
            # pyfunc (which rejects a named tensor); both call the module on the tensor as this does.
            import torch

            with torch.no_grad():
                output = self.raw(torch.from_numpy(np.ascontiguousarray(inputs[schema.inputs[0].name])))
            if not isinstance(output, torch.Tensor):
                raise NotConvertible(f"the network returns {type(output).__name__}, not one tensor")
            return output.numpy()
        if self.info.flavor == "tensorflow" and isinstance(schema, TensorSchema) and len(schema.inputs) == 1:
            # Served with Keras directly too (runtime/loaders/tensorflow.py): compared with that call.
            return np.asarray(self.raw(inputs[schema.inputs[0].name], training=False))
        return self.pyfunc.predict(self.request(inputs))

    def request(self, inputs: dict[str, Array]) -> Any:
        schema = self.info.inputs
        if isinstance(schema, ColumnSchema):
            import pandas as pd

            return pd.DataFrame({column.name: inputs[column.name] for column in schema.columns})
        if isinstance(schema, TensorSchema) and len(schema.inputs) == 1:
            return inputs[schema.inputs[0].name]
        return inputs


@dataclass(frozen=True)
class Outcome:
    verified: tuple[Candidate, AdapterSpec, Verification] | None
    reason: str


def verify_attempts(
    native: NativeModel, flavor: str, info: MLmodelInfo, rtol: float, timings: dict[str, float]
) -> Outcome:
    """Build the flavor's attempts in order; the first that answers like the native model wins."""
    schema = info.inputs
    if isinstance(schema, ColumnSchema):
        sample = column_sample(schema, native.example)
    elif isinstance(schema, TensorSchema):
        sample = tensor_sample(schema, native.example)
    else:
        raise NotConvertible("the model has no input signature")
    try:
        with quiet():
            native_answer = native.predict(sample)
    except Exception as exc:
        raise NotConvertible(f"the native model fails on the verification sample: {_short(exc)}") from exc
    output_base = _output_spec(native_answer)

    failures = []
    for attempt in attempts(flavor, native.raw, info):
        mark = time.monotonic()
        try:
            candidate = attempt.build()
        except NotConvertible as exc:
            failures.append(f"{attempt.label}: {exc}")
            continue
        except ImportError:
            raise
        except Exception as exc:
            failures.append(f"{attempt.label}: conversion failed: {_short(exc)}")
            continue
        finally:
            timings["convert_s"] = timings.get("convert_s", 0.0) + time.monotonic() - mark
        mark = time.monotonic()
        try:
            adapter = AdapterSpec(
                feeds=candidate.feeds,
                output=OutputSpec(
                    graph_output=candidate.graph_output, column=candidate.column, **output_base
                ),
                scores_output=candidate.scores_output,
            )
            result = _verify(native, candidate, adapter, sample, native_answer, rtol)
        except Exception as exc:
            result = Comparison(False, f"the converted graph failed: {_short(exc)}")
        finally:
            timings["verify_s"] = timings.get("verify_s", 0.0) + time.monotonic() - mark
        if isinstance(result, Verification):
            return Outcome((candidate, adapter, result), f"{attempt.label}, {result.describe()}")
        failures.append(f"{attempt.label}: {result.reason}")
        log.info("optimization: attempt %r rejected: %s", attempt.label, result.reason)
    return Outcome(None, "no conversion answers like the native model: " + "; ".join(failures))


def _verify(
    native: NativeModel,
    candidate: Candidate,
    adapter: AdapterSpec,
    sample: dict[str, Array],
    native_answer: Any,
    rtol: float,
) -> Verification | Comparison:
    model = OptimizedModel(open_session(candidate.onnx_bytes), adapter)
    rows = len(next(iter(sample.values())))
    comparisons = [compare_answers(native_answer, model.predict(sample), rtol=rtol, what="sample answers")]
    if candidate.scores_output is not None and candidate.native_scores is not None:
        with quiet():
            native_scores = np.asarray(candidate.native_scores(native.request(sample)))
        (converted_scores,) = model.run_outputs(sample, [candidate.scores_output])
        comparisons.append(
            compare_arrays(
                native_scores, np.asarray(converted_scores), rtol=rtol, what="scores", check_dtype=False
            )
        )
    for row in range(min(SINGLE_ROW_CHECKS, rows)):
        single = {name: values[row : row + 1] for name, values in sample.items()}
        try:
            with quiet():
                native_single = native.predict(single)
        except Exception:
            # Some native models reject a batch of one (an exported program specialised to larger
            # batches); the graph need not reproduce a failure.
            continue
        comparisons.append(
            compare_answers(native_single, model.predict(single), rtol=rtol, what=f"row {row} alone")
        )
        rows += 1
    for comparison in comparisons:
        if not comparison.ok:
            return comparison
    exact = adapter.output.dtype[1:2] not in ("f", "c")
    return Verification(
        rows=rows,
        label_exact=exact,
        max_rel_error=max(comparison.max_rel_error for comparison in comparisons),
        rtol=rtol,
    )


def _output_spec(native_answer: Any) -> dict[str, Any]:
    """dtype, rank and frame columns of the native answer, which the graph's answer must reproduce."""
    if isinstance(native_answer, np.ndarray):
        return {"dtype": native_answer.dtype.str, "ndim": native_answer.ndim}
    if type(native_answer).__name__ == "DataFrame":
        dtypes = {dtype.str for dtype in native_answer.dtypes}
        if len(dtypes) != 1:
            raise NotConvertible(f"the native model answers a data frame of mixed dtypes {sorted(dtypes)}")
        columns = tuple(int(c) if isinstance(c, np.integer | int) else str(c) for c in native_answer.columns)
        return {"dtype": dtypes.pop(), "ndim": 2, "frame_columns": columns}
    raise NotConvertible(
        f"the native model answers {type(native_answer).__name__}, which no graph reproduces"
    )


def _example_arrays(info: MLmodelInfo, example: Any) -> dict[str, Array] | None:
    """The input example as the replica would hold it, or None if it does not fit the signature."""
    if example is None:
        return None
    schema = info.inputs
    try:
        if isinstance(schema, ColumnSchema):
            if type(example).__name__ != "DataFrame":
                return None
            return {
                column.name: example[column.name].to_numpy().astype(column.dtype) for column in schema.columns
            }
        if isinstance(schema, TensorSchema) and len(schema.inputs) == 1 and isinstance(example, np.ndarray):
            return {schema.inputs[0].name: example}
    except (KeyError, TypeError, ValueError) as exc:
        log.warning(
            "optimization: the input example does not fit the signature (%s); generating rows only", exc
        )
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:_REASON_CHARS]
