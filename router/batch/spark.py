"""Scoring a Spark DataFrame through a serving endpoint from the executors, the way ``ai_query`` is used.

``score_dataframe(frame, endpoint, ...)`` returns a DataFrame of the key columns and a ``prediction``
column. Each executor sends its partition's rows in requests of ``batch_rows`` (``mapInPandas``), with
the batch scorer's codecs (binary tensors for numeric features, else JSON) and its retries with back-off
on 429/502/503/504 and lost connections. Spark retries a failed task as usual; nothing here writes, so a
retried task leaves nothing twice (writing the result is the caller's own ``.write``).

Needs ``pip install 'zeroserve[spark]'`` (pyspark; Java 17 on the machine).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pyarrow as pa

from router.batch.scorer import PROTOCOLS, BatchScoringError, _Progress, score_batch


def score_dataframe(
    frame: Any,
    endpoint: str,
    *,
    url: str,
    token: str | None = None,
    features: Sequence[str] | None = None,
    key: Sequence[str] = (),
    result_type: str = "double",
    batch_rows: int = 1000,
    max_retries: int = 8,
    timeout_s: float = 300.0,
    protocol: str = "auto",
) -> Any:
    """``frame``'s ``key`` columns and the endpoint's prediction for each row (as ``result_type``, a Spark
    SQL type). ``features``: the columns the model takes (default: every column not in ``key``)."""
    from pyspark.sql.types import StructField, StructType, _parse_datatype_string

    if protocol not in PROTOCOLS:  # refused on the driver, not on every executor
        raise BatchScoringError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    columns = list(features) if features else [name for name in frame.columns if name not in key]
    fields = [field for field in frame.schema.fields if field.name in key]
    schema = StructType([*fields, StructField("prediction", _parse_datatype_string(result_type), True)])
    settings = {"endpoint": endpoint, "url": url, "token": token, "features": columns, "key": list(key),
                "batch_rows": batch_rows, "max_retries": max_retries, "timeout_s": timeout_s,
                "protocol": protocol}

    def score_partition(chunks: Iterator[Any]) -> Iterator[Any]:
        yield from _score_chunks(chunks, settings)

    return frame.select(*key, *columns).mapInPandas(score_partition, schema)


def _score_chunks(chunks: Iterator[Any], settings: dict[str, Any]) -> Iterator[Any]:
    """On an executor: each pandas chunk of the partition, scored ``batch_rows`` at a time."""
    loop = asyncio.new_event_loop()
    headers = {"Authorization": f"Bearer {settings['token']}"} if settings["token"] else {}
    client = httpx.AsyncClient(base_url=settings["url"], headers=headers, timeout=settings["timeout_s"])
    try:
        for chunk in chunks:
            for start in range(0, len(chunk), settings["batch_rows"]):
                rows = chunk.iloc[start: start + settings["batch_rows"]]
                batch = pa.RecordBatch.from_pandas(rows, preserve_index=False)
                predicted = loop.run_until_complete(score_batch(
                    client, batch, endpoint=settings["endpoint"], features=settings["features"],
                    protocol=settings["protocol"], index=start, progress=_Progress(len(rows)),
                    max_retries=settings["max_retries"]))
                scored = rows[settings["key"]].reset_index(drop=True)
                values = predicted.column(0).to_pylist()
                scored["prediction"] = values
                yield scored
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
