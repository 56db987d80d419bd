"""How batch scoring reads its input (``router.batch.scorer._Input.batches``): the same batches on every
run, whatever the files' sizes, and a resumed run reads no file whose rows all lie in parts already
written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.batch.scorer import _Input


class _Counted:
    """A dataset fragment that counts how often it is read."""

    def __init__(self, fragment: Any, reads: list[str]) -> None:
        self.fragment, self.reads = fragment, reads

    def to_batches(self, **kwargs: Any) -> Any:
        self.reads.append(self.fragment.path)
        return self.fragment.to_batches(**kwargs)


def _write(folder: Path, sizes: list[int]) -> None:
    start = 0
    for number, size in enumerate(sizes):
        ids = list(range(start, start + size))
        # Small row groups: a file is read in pieces shorter than a batch, as real files often are.
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64())}), folder / f"part-{number:03}.parquet",
                       row_group_size=7)
        start += size


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6).filter(lambda sizes: sum(sizes) > 0),
       batch_rows=st.integers(1, 25), skipped=st.sets(st.integers(0, 12)))
def test_skipped_batches_are_left_out_and_whole_files_of_them_not_read(
    tmp_path_factory: Any, sizes: list[int], batch_rows: int, skipped: set[int]
) -> None:
    folder = tmp_path_factory.mktemp("input")
    _write(folder, sizes)
    source = _Input.open(str(folder))
    everything = [(index, batch["id"].to_pylist()) for index, batch in source.batches(batch_rows)]
    total = sum(sizes)
    # Every batch in order, exactly batch_rows rows (the last shorter): row r is in batch r // batch_rows.
    assert [index for index, _ in everything] == list(range(-(-total // batch_rows)))
    assert all(ids == list(range(index * batch_rows, min(total, (index + 1) * batch_rows)))
               for index, ids in everything)

    reads: list[str] = []
    source.fragments = [_Counted(fragment, reads) for fragment in source.fragments]
    resumed = [(index, batch["id"].to_pylist())
               for index, batch in source.batches(batch_rows, skipped.__contains__)]
    assert resumed == [(index, ids) for index, ids in everything if index not in skipped]
    begins = 0
    for fragment, size in zip(source.fragments, source.counts, strict=True):
        needed = {row // batch_rows for row in range(begins, begins + size)}
        assert (fragment.fragment.path in reads) == bool(needed - skipped), (begins, size, needed, skipped)
        begins += size


def test_text_outputs_land_as_strings_and_a_wrong_row_count_is_named() -> None:
    import numpy as np
    import pytest

    from router.batch.scorer import BatchScoringError, v2_table

    labels = np.array([b"fraud", b"ok"], dtype=object)  # BYTES as the protocol decodes them
    assert v2_table({"label": labels}, 2).column("prediction").to_pylist() == ["fraud", "ok"]
    with pytest.raises(BatchScoringError, match="of shape"):
        v2_table({"label": labels}, 3)
