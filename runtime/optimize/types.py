"""What optimization decides and records: the mode, the result, and the adapter spec.

The adapter spec is how an ONNX graph converted from an MLflow model is served behind the MLflow
protocol: which request columns feed which graph input, and which graph output, reshaped and cast how,
is the answer the native model would have given. It is stored as JSON beside the cached graph, so a
replica that finds a verified conversion in the cache needs neither MLflow nor the converter to serve it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

OptimizationMode: TypeAlias = Literal["auto", "off", "required"]
OptimizationPath: TypeAlias = Literal["onnx", "native"]
OPTIMIZATION_MODES: tuple[OptimizationMode, ...] = ("auto", "off", "required")

# How request data becomes one graph input:
#   "matrix": the listed columns, stacked in order into a [rows, len(columns)] array;
#   "column": one column as a [rows, 1] array (column-transformer pipelines take one input per column);
#   "tensor": the request tensor of that name (tensor-based signatures), cast to the graph's dtype.
FeedKind: TypeAlias = Literal["matrix", "column", "tensor"]


@dataclass(frozen=True, slots=True)
class FeedSpec:
    graph_input: str
    kind: FeedKind
    sources: tuple[str, ...]  # column names (matrix, column) or the request tensor's name (tensor)
    dtype: str  # numpy dtype string the graph expects ("<f8", "<f4", "<i8", "|O" for strings)


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """How the graph's outputs become exactly what the native pyfunc ``predict`` returns."""

    graph_output: str
    dtype: str  # the native answer's numpy dtype string
    ndim: int  # the native answer's rank: 1 for labels or single-target values, 2 for probabilities
    column: int | None = None  # keep only this column ([:, column]), e.g. a booster's P(class 1)
    # The native answer is a pandas DataFrame with these column labels (the PyTorch flavor wraps its
    # tensor output so when the request is a DataFrame); None: it is a numpy array.
    frame_columns: tuple[str | int, ...] | None = None


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    feeds: tuple[FeedSpec, ...]
    output: OutputSpec
    # Graph output compared with the native model's scores during verification (a classifier's
    # probabilities); not served.
    scores_output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterSpec:
        feeds = tuple(
            FeedSpec(
                graph_input=str(feed["graph_input"]),
                kind=feed["kind"],
                sources=tuple(str(source) for source in feed["sources"]),
                dtype=str(feed["dtype"]),
            )
            for feed in data["feeds"]
        )
        raw_output = data["output"]
        frame_columns = raw_output.get("frame_columns")
        output = OutputSpec(
            graph_output=str(raw_output["graph_output"]),
            dtype=str(raw_output["dtype"]),
            ndim=int(raw_output["ndim"]),
            column=None if raw_output.get("column") is None else int(raw_output["column"]),
            frame_columns=None if frame_columns is None else tuple(frame_columns),
        )
        scores = data.get("scores_output")
        return cls(feeds=feeds, output=output, scores_output=None if scores is None else str(scores))


@dataclass(frozen=True, slots=True)
class Verification:
    """What was compared before a converted graph was trusted."""

    rows: int  # rows compared (input example + generated sample + single-row calls)
    label_exact: bool  # the served answer is labels, compared for exact equality
    max_rel_error: float  # the largest relative difference seen in compared scores/values
    rtol: float

    def describe(self) -> str:
        what = "labels equal" if self.label_exact else "values within"
        tolerance = "" if self.label_exact else f" rtol={self.rtol:g}"
        return (
            f"verified on {self.rows} rows: {what}{tolerance}, "
            f"max relative difference {self.max_rel_error:.2e}"
        )


@dataclass(frozen=True)
class OptimizationResult:
    """Which path a model is served by, and why.

    ``path`` is ``"onnx"`` only for a conversion verified against the native model; then
    ``onnx_model_path`` and ``adapter`` describe how to serve it. ``reason`` says what was verified, or
    why the model runs natively (mode off, unsupported flavor, converter error, mismatch).
    """

    path: OptimizationPath
    reason: str
    mode: OptimizationMode
    flavor: str | None = None
    onnx_model_path: Path | None = None
    # The verified graph's bytes (what the replica's session is built from; see ConversionCache.lookup).
    onnx_model: bytes | None = field(default=None, repr=False, compare=False)
    adapter: AdapterSpec | None = None
    converter: str | None = None  # e.g. "skl2onnx", "onnxmltools", "torch.onnx"
    converter_versions: dict[str, str] = field(default_factory=dict)
    cache_key: str | None = None
    from_cache: bool = False  # the decision (graph or fallback) was found in the warm cache
    verification: Verification | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase

    def describe(self) -> str:
        """One line for the replica log: which path and why."""
        if self.path == "onnx":
            versions = ", ".join(
                f"{name} {version}" for name, version in sorted(self.converter_versions.items())
            )
            cached = "cached conversion" if self.from_cache else "converted now"
            return f"serving {self.flavor} model as ONNX ({cached}; {versions}): {self.reason}"
        return f"serving natively (optimization={self.mode}): {self.reason}"
