"""A request's inputs as the wire protocols decoded them, before they meet the model's schema."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Payload:
    """Exactly one of ``split``, ``named`` or ``unnamed`` is set.

    ``split``: column names (``None`` when the request gave none) and rows, as in MLflow's
    ``dataframe_split`` and CSV. ``named``: input or column name to values (``dataframe_records`` after
    transposition, ``inputs`` given as an object, Open Inference Protocol tensors as numpy arrays).
    ``unnamed``: one tensor without a name (``inputs``/``instances`` given as a list).
    """

    split: tuple[list[str] | None, list[Any]] | None = None
    named: dict[str, Any] | None = None
    unnamed: Any = None
    params: dict[str, Any] | None = None
    # Set when ``named`` came from row records (each value a list with one item per row).
    from_records: bool = False
    # Set when values are text (CSV cells) rather than JSON-typed.
    text_cells: bool = False


def records_to_named(records: list[Any], what: str) -> dict[str, list[Any]]:
    """Transpose ``[{"a": 1, "b": 2}, ...]`` into ``{"a": [1, ...], "b": [2, ...]}``.

    A key missing from some records gets ``None`` there (a missing value), as pandas would.
    """
    from runtime.errors import InvalidInput

    names: dict[str, None] = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise InvalidInput(f"{what}: record {index} is a {type(record).__name__}, expected an object")
        for key in record:
            names.setdefault(key, None)
    return {name: [record.get(name) for record in records] for name in names}
