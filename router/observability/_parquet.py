"""Encoding captured requests as Parquet and putting the files where they belong.

Runs in worker threads and the writer task, never on the request path. pyarrow and aiobotocore are
imported here, lazily, so a gateway that captures nothing never loads them.
"""

from __future__ import annotations

import datetime
import io
import os
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from router.observability.inference_tables import CaptureRecord

# The table's columns; modelled on Databricks' payload table (request_id ~ databricks_request_id,
# latency_ms ~ execution_time_ms, usage_context as a string map).
COLUMNS = (
    "request_id", "client_request_id", "endpoint_name", "served_entity_name", "date", "timestamp_ms",
    "latency_ms", "status_code", "request_content_type", "request", "response", "request_truncated",
    "response_truncated", "usage_context",
)


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("request_id", pa.string()),
        ("client_request_id", pa.string()),
        ("endpoint_name", pa.string()),
        ("served_entity_name", pa.string()),
        ("date", pa.date32()),
        ("timestamp_ms", pa.int64()),
        ("latency_ms", pa.float64()),
        ("status_code", pa.int32()),
        ("request_content_type", pa.string()),
        ("request", pa.string()),
        ("response", pa.string()),
        ("request_truncated", pa.bool_()),
        ("response_truncated", pa.bool_()),
        ("usage_context", pa.map_(pa.string(), pa.string())),
    ])


def request_fields(body: bytes, truncated: bool) -> tuple[str | None, list[tuple[str, str]] | None]:
    """``client_request_id`` and ``usage_context`` of a JSON request body, when it has them."""
    if truncated or not body.lstrip().startswith(b"{"):
        return None, None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(parsed, dict):
        return None, None
    client_request_id = parsed.get("client_request_id")
    usage = parsed.get("usage_context")
    usage_pairs = None
    if isinstance(usage, dict):
        usage_pairs = [(str(key), value if isinstance(value, str) else orjson.dumps(value).decode())
                       for key, value in usage.items()]
    return (str(client_request_id) if client_request_id is not None else None), usage_pairs


def encode(records: list[CaptureRecord]) -> bytes:
    """The records as one Parquet file (zstd), in memory."""
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(arrow_table(records), sink, compression="zstd")
    return sink.getvalue()


def arrow_table(records: list[CaptureRecord]) -> Any:
    """The records as an Arrow table of the inference table's schema."""
    import pyarrow as pa

    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for record in records:
        client_request_id, usage_context = request_fields(record.request_body, record.request_truncated)
        columns["request_id"].append(record.request_id)
        columns["client_request_id"].append(client_request_id)
        columns["endpoint_name"].append(record.endpoint)
        columns["served_entity_name"].append(record.served_entity)
        moment = datetime.datetime.fromtimestamp(record.timestamp_ms / 1000, datetime.UTC)
        columns["date"].append(moment.date())
        columns["timestamp_ms"].append(record.timestamp_ms)
        columns["latency_ms"].append(record.latency_ms)
        columns["status_code"].append(record.status_code)
        columns["request_content_type"].append(record.request_content_type)
        # Binary bodies (v2 binary tensors) keep what decodes; the table is for reading, not replay.
        columns["request"].append(record.request_body.decode("utf-8", errors="replace"))
        columns["response"].append(record.response_body.decode("utf-8", errors="replace"))
        columns["request_truncated"].append(record.request_truncated)
        columns["response_truncated"].append(record.response_truncated)
        columns["usage_context"].append(usage_context)
    return pa.table(columns, schema=_schema())


def write_local(root: Path, name: str, payload: bytes) -> Path:
    """Publish ``payload`` at ``root/name`` atomically (temporary name, fsync, rename)."""
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(temporary, "wb") as file:
        file.write(payload)
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(target)
    return target


class S3Writer:
    """One aiobotocore client, opened on first use, for every ``s3://`` destination."""

    def __init__(self) -> None:
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    async def _ensure(self) -> Any:
        if self._client is None:
            from aiobotocore.session import get_session
            from botocore.config import Config

            from runtime.store.settings import StoreSettings

            store = StoreSettings()
            config = Config(s3={"addressing_style": store.s3_addressing_style},
                            connect_timeout=store.connect_timeout_s, read_timeout=store.read_timeout_s,
                            retries={"max_attempts": 3, "mode": "standard"})
            self._stack = AsyncExitStack()
            self._client = await self._stack.enter_async_context(get_session().create_client(
                "s3", endpoint_url=store.s3_endpoint_url, region_name=store.s3_region or "us-east-1",
                verify=store.s3_verify_tls, config=config))
        return self._client

    async def put(self, root: str, name: str, payload: bytes) -> str:
        bucket, _, prefix = root.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"inference table location {root!r} names no bucket")
        key = f"{prefix.strip('/')}/{name}" if prefix.strip("/") else name
        client = await self._ensure()
        await client.put_object(Bucket=bucket, Key=key, Body=payload,
                                ContentType="application/vnd.apache.parquet")
        return f"s3://{bucket}/{key}"

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = None
        self._client = None
