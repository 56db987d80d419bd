"""The adapter: request arrays to graph feeds, graph outputs to the native answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from runtime.errors import InvalidInput
from runtime.optimize.adapter import OnnxAdapter
from runtime.optimize.types import AdapterSpec, FeedSpec, OutputSpec


def adapter(*feeds: FeedSpec, output: OutputSpec | None = None) -> OnnxAdapter:
    return OnnxAdapter(AdapterSpec(feeds=feeds, output=output or OutputSpec("label", "<i8", 1)))


def test_matrix_feed_stacks_columns_in_signature_order_and_casts() -> None:
    feeds = adapter(FeedSpec("input", "matrix", ("b", "a"), "<f4")).feeds(
        {"a": np.array([1.0, 2.0]), "b": np.array([10, 20])}
    )
    np.testing.assert_array_equal(feeds["input"], np.array([[10.0, 1.0], [20.0, 2.0]], dtype=np.float32))
    assert feeds["input"].dtype == np.float32


def test_column_feeds_are_rows_by_one_and_strings_stay_strings() -> None:
    feeds = adapter(
        FeedSpec("city", "column", ("city",), "|O"), FeedSpec("n", "column", ("n",), "<i8")
    ).feeds({"city": np.array(["Oslo", "Lima"], dtype=object), "n": np.array([1, 2], dtype=np.int32)})
    assert feeds["city"].shape == (2, 1) and feeds["city"].dtype == object and feeds["city"][1, 0] == "Lima"
    assert feeds["n"].dtype == np.int64 and feeds["n"].shape == (2, 1)


def test_tensor_feed_takes_the_only_tensor_whatever_its_name() -> None:
    spec = FeedSpec("input", "tensor", ("input-0",), "<f4")
    feeds = adapter(spec).feeds({"": np.ones((2, 3))})
    assert feeds["input"].dtype == np.float32 and feeds["input"].shape == (2, 3)


def test_missing_or_unreadable_input_is_a_clear_400() -> None:
    matrix = adapter(FeedSpec("input", "matrix", ("a", "b"), "<f8"))
    with pytest.raises(InvalidInput, match="missing input 'b'") as caught:
        matrix.feeds({"a": np.array([1.0])})
    assert caught.value.status_code == 400
    with pytest.raises(InvalidInput, match="cannot be read as float64"):
        matrix.feeds({"a": np.array(["x"], dtype=object), "b": np.array([1.0])})


def test_answer_reshapes_selects_and_casts_like_the_native_model() -> None:
    values = adapter(output=OutputSpec("variable", "<f8", 1)).answer(
        np.array([[1.5], [2.5]], dtype=np.float32)
    )
    assert values.dtype == np.float64 and values.shape == (2,)
    positive = adapter(output=OutputSpec("probabilities", "<f4", 1, column=1)).answer(
        np.array([[0.3, 0.7], [0.9, 0.1]], dtype=np.float32)
    )
    np.testing.assert_array_equal(positive, np.array([0.7, 0.1], dtype=np.float32))
    labels = adapter(output=OutputSpec("label", "<U6", 1)).answer(np.array(["gold", "silver"], dtype=object))
    assert labels.dtype == np.dtype("<U6") and labels.tolist() == ["gold", "silver"]


def test_answer_as_a_frame_when_the_native_model_returns_one() -> None:
    frame_adapter = adapter(output=OutputSpec("output", "<f4", 2, frame_columns=(0, 1)))
    frame = frame_adapter.answer(np.array([[0.1, 0.9]], dtype=np.float32))
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == [0, 1]
    assert frame.dtypes.tolist() == [np.float32, np.float32]


def test_spec_round_trips_through_json_form() -> None:
    spec = AdapterSpec(
        feeds=(FeedSpec("input", "matrix", ("a", "b"), "<f4"),),
        output=OutputSpec("output", "<f4", 2, column=None, frame_columns=(0, "p")),
        scores_output="probabilities",
    )
    assert AdapterSpec.from_dict(spec.to_dict()) == spec
