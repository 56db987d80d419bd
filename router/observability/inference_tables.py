"""Inference tables: every request/response pair of an endpoint, written as Parquet in batches.

An endpoint opts in with ``auto_capture_config.enabled``. The data plane hands each finished request to
``InferenceTables.capture`` — O(1), never awaits, never raises: the record goes into one bounded
buffer (records and bytes), and when the buffer is full the record is dropped and counted. A
background task drains the buffer every ``flush_interval_s`` (or as soon as a batch is full), parses
the bodies for ``client_request_id`` and ``usage_context`` (off the request path, in a worker thread),
and writes one Parquet file per endpoint and batch to a local directory or an ``s3://`` prefix:

    {root}/{table}/date=YYYY-MM-DD/part-{first timestamp ms}-{random}.parquet

``{table}`` is ``{catalog_name}.{schema_name}.{table_name_prefix}_payload`` as in Databricks (the
parts that are set), or ``{endpoint}_payload``. ``root`` is ``auto_capture_config.location`` (a
zeroserve extension) or ``ZEROSERVE_INFERENCE_TABLES_URI`` (default ``$ZEROSERVE_HOME/inference_tables``).
Local files appear atomically (written to a temporary name, then renamed), so a reader never sees half.

With ``ZEROSERVE_INFERENCE_TABLES_FORMAT=delta`` (or ``auto_capture_config.format: delta``) the same rows
go to a Delta Lake table at ``{root}/{table}`` instead, a commit per batch (``_delta``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from autoscaler.types import EntityKey
from router.observability import _parquet
from router.observability.logging import REQUEST_ID_SCOPE_KEY

logger = logging.getLogger("zeroserve.inference_tables")


def _default_root() -> str:
    home = os.environ.get("ZEROSERVE_HOME")
    return str((Path(home).expanduser() if home else Path.home() / ".zeroserve") / "inference_tables")


class InferenceTableSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZEROSERVE_INFERENCE_TABLES_", extra="ignore")

    uri: str = Field(default_factory=_default_root)
    flush_interval_s: float = Field(default=10.0, gt=0)
    max_batch_records: int = Field(default=1000, ge=1)
    # The buffer between the request path and the writer: past either bound, records are dropped.
    max_buffered_records: int = Field(default=10_000, ge=1)
    max_buffered_bytes: int = Field(default=64 * 1024**2, ge=1024)
    # Bodies longer than this are cut (and flagged) so one huge request cannot fill the buffer.
    max_payload_bytes: int = Field(default=1024**2, ge=0)
    write_attempts: int = Field(default=3, ge=1)
    # "parquet" (a file per batch) or "delta" (a Delta Lake table, a commit per batch); an endpoint's
    # auto_capture_config.format overrides it.
    format: Literal["parquet", "delta"] = "parquet"
    # Delta tables: how often small files are compacted, and rows older than this many days deleted
    # (None: kept) and their files vacuumed.
    maintenance_interval_s: float = Field(default=3600.0, gt=0)
    retention_days: float | None = Field(default=None, gt=0)


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """An endpoint's ``auto_capture_config``, as far as capture needs it."""

    enabled: bool
    table: str
    location: str | None = None
    format: str | None = None  # None: the gateway's setting

    @classmethod
    def from_api(cls, endpoint: str, config: Mapping[str, Any] | None) -> CaptureConfig | None:
        """The capture of ``endpoint`` from its API config object; ``None`` when it is off."""
        if not config or not config.get("enabled"):
            return None
        parts = [str(config[name]) for name in ("catalog_name", "schema_name") if config.get(name)]
        prefix = str(config.get("table_name_prefix") or endpoint)
        table = ".".join([*parts, f"{prefix}_payload"])
        location = config.get("location")
        table_format = config.get("format")  # validated by the API (parquet or delta)
        return cls(enabled=True, table=table, location=str(location) if location else None,
                   format=str(table_format) if table_format in ("parquet", "delta") else None)


@dataclass(slots=True)
class CaptureRecord:
    """One request/response pair, as the data plane saw it. Bodies are kept as the bytes they were."""

    request_id: str
    endpoint: str
    served_entity: str
    timestamp_ms: int  # when the request arrived (wall clock)
    latency_ms: float
    status_code: int
    request_body: bytes
    response_body: bytes
    request_content_type: str | None = None
    # Filled by the writer: the bodies were cut to max_payload_bytes.
    request_truncated: bool = field(default=False)
    response_truncated: bool = field(default=False)

    @property
    def size(self) -> int:
        return len(self.request_body) + len(self.response_body) + 256


@dataclass
class TableCounters:
    captured: int = 0
    dropped: int = 0  # the buffer was full
    written: int = 0
    failed: int = 0  # lost because every write attempt failed
    files: int = 0


class InferenceTables:
    """Capture buffer and writer for every endpoint with capture enabled."""

    def __init__(self, settings: InferenceTableSettings | None = None) -> None:
        self.settings = settings or InferenceTableSettings()
        self._configs: dict[str, CaptureConfig] = {}
        # Endpoints whose capture setting is known (on or off). An endpoint the data plane asks about
        # before the observability loop synced it is looked up at once through ``resolver``, so the
        # first requests of a new endpoint are captured too.
        self._known: set[str] = set()
        self.resolver: Callable[[str], Mapping[str, Any] | None] | None = None
        self._buffer: deque[CaptureRecord] = deque()
        self._buffered_bytes = 0
        self.counters: dict[str, TableCounters] = {}
        self._batch_full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._s3_writer: _parquet.S3Writer | None = None
        self._maintenance: asyncio.Task[None] | None = None

    # Configuration (control plane) -------------------------------------------------------------

    def configure(self, endpoint: str, auto_capture_config: Mapping[str, Any] | None) -> None:
        config = CaptureConfig.from_api(endpoint, auto_capture_config)
        self._known.add(endpoint)
        if config is None:
            self._configs.pop(endpoint, None)
        else:
            self._configs[endpoint] = config
            self.counters.setdefault(endpoint, TableCounters())

    def forget(self, endpoint: str) -> None:
        self._configs.pop(endpoint, None)
        self._known.discard(endpoint)

    def enabled(self, endpoint: str) -> bool:
        """Cheap check for the data plane (a set lookup once the endpoint is known)."""
        if endpoint in self._configs:
            return True
        if endpoint in self._known or self.resolver is None:
            return False
        self.configure(endpoint, self.resolver(endpoint))
        return endpoint in self._configs

    def config(self, endpoint: str) -> CaptureConfig | None:
        return self._configs.get(endpoint)

    # The request path ---------------------------------------------------------------------------

    def capture(self, record: CaptureRecord) -> bool:
        """Queue ``record`` for writing; ``False`` (and counted) when capture is off or the buffer is full."""
        if record.endpoint not in self._configs:
            return False
        counters = self.counters[record.endpoint]
        limit = self.settings.max_payload_bytes
        if len(record.request_body) > limit:
            record.request_body = record.request_body[:limit]
            record.request_truncated = True
        if len(record.response_body) > limit:
            record.response_body = record.response_body[:limit]
            record.response_truncated = True
        size = record.size
        if (len(self._buffer) >= self.settings.max_buffered_records
                or self._buffered_bytes + size > self.settings.max_buffered_bytes):
            counters.dropped += 1
            return False
        self._buffer.append(record)
        self._buffered_bytes += size
        counters.captured += 1
        if len(self._buffer) >= self.settings.max_batch_records:
            self._batch_full.set()
        return True

    def capture_request(self, scope: Mapping[str, Any], entity: EntityKey, status: int, elapsed_s: float,
                        request_body: bytes, response_body: bytes) -> bool:
        """``capture`` for the data plane: one finished request, as its handler saw it."""
        if entity.endpoint not in self._configs:
            return False
        request_id = scope.get(REQUEST_ID_SCOPE_KEY) or uuid.uuid4().hex
        content_type = None
        for name, value in scope.get("headers", ()):
            if name == b"content-type":
                content_type = value.decode("latin-1")
                break
        return self.capture(CaptureRecord(
            request_id=request_id,
            endpoint=entity.endpoint,
            served_entity=entity.served_entity,
            timestamp_ms=int((time.time() - elapsed_s) * 1000),
            latency_ms=elapsed_s * 1000.0,
            status_code=status,
            request_body=request_body,
            response_body=response_body,
            request_content_type=content_type,
        ))

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # The writer ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="zeroserve-inference-tables")
        if self._maintenance is None:
            # Its own task: a long compaction must not hold up the writer (the buffer would fill and
            # captured requests be dropped meanwhile).
            self._maintenance = asyncio.create_task(self._maintain_every(), name="inference-table-upkeep")

    async def close(self) -> None:
        """Stop the writer after writing what is buffered."""
        for task in (self._task, self._maintenance):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._maintenance = None
        await self.flush()
        if self._s3_writer is not None:
            await self._s3_writer.close()
            self._s3_writer = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._batch_full.wait(), self.settings.flush_interval_s)
            self._batch_full.clear()
            try:
                await self.flush()
            except Exception:  # never let one bad batch stop capture for good
                logger.exception("inference table flush failed")

    async def _maintain_every(self) -> None:
        while True:
            await asyncio.sleep(self.settings.maintenance_interval_s)
            await self.maintain()

    async def maintain(self) -> dict[str, dict[str, Any]]:
        """Compact (and, with a retention, trim and vacuum) every Delta inference table; per table what
        was done. A table that cannot be maintained now is tried again next time."""
        from router.observability import _delta

        done = {}
        now = datetime.datetime.now(datetime.UTC)
        for config in list(self._configs.values()):
            if (config.format or self.settings.format) != "delta":
                continue
            root = config.location or self.settings.uri
            try:
                done[config.table] = await asyncio.to_thread(_delta.maintain, root, config.table,
                                                             self.settings.retention_days, now)
            except Exception as error:
                logger.warning("inference table %s: maintenance failed: %s", config.table, error)
        return done

    async def flush(self) -> None:
        """Write everything buffered now, one batch per endpoint at a time."""
        while self._buffer:
            batch: list[CaptureRecord] = []
            while self._buffer and len(batch) < self.settings.max_batch_records:
                record = self._buffer.popleft()
                self._buffered_bytes -= record.size
                batch.append(record)
            by_endpoint: dict[str, list[CaptureRecord]] = {}
            for record in batch:
                by_endpoint.setdefault(record.endpoint, []).append(record)
            for endpoint, records in by_endpoint.items():
                await self._write(endpoint, records)

    async def _write(self, endpoint: str, records: list[CaptureRecord]) -> None:
        config = self._configs.get(endpoint)
        counters = self.counters.setdefault(endpoint, TableCounters())
        if config is None:  # capture turned off (or endpoint deleted) while these waited: still write them
            config = CaptureConfig(True, f"{endpoint}_payload")
        root = config.location or self.settings.uri
        if (config.format or self.settings.format) == "delta":
            from router.observability import _delta

            async def write() -> None:
                await asyncio.to_thread(_delta.append, root, config.table, records)
        else:
            first_ms = min(record.timestamp_ms for record in records)
            day = time.strftime("%Y-%m-%d", time.gmtime(first_ms / 1000))
            name = f"{config.table}/date={day}/part-{first_ms}-{uuid.uuid4().hex[:12]}.parquet"

            async def write() -> None:
                payload = await asyncio.to_thread(_parquet.encode, records)
                if root.startswith("s3://"):
                    if self._s3_writer is None:
                        self._s3_writer = _parquet.S3Writer()
                    await self._s3_writer.put(root, name, payload)
                else:
                    await asyncio.to_thread(_parquet.write_local, Path(root.removeprefix("file://")), name,
                                            payload)

        for attempt in range(1, self.settings.write_attempts + 1):
            try:
                await write()
            except Exception as error:
                if attempt == self.settings.write_attempts:
                    counters.failed += len(records)
                    logger.warning("inference table %s: dropped %d records after %d attempts: %s",
                                   config.table, len(records), attempt, error)
                    return
                await asyncio.sleep(0.2 * 2 ** (attempt - 1))
            else:
                counters.written += len(records)
                counters.files += 1
                return


class TableCollector:
    """Inference-table counters as Prometheus families."""

    def __init__(self, tables: InferenceTables) -> None:
        self._tables = tables

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        records = CounterMetricFamily("zeroserve_inference_table_records",
                                      "Captured request/response pairs, by what became of them.",
                                      labels=("endpoint", "outcome"))
        files = CounterMetricFamily("zeroserve_inference_table_files", "Parquet files written.",
                                    labels=("endpoint",))
        for endpoint, counters in sorted(self._tables.counters.items()):
            for outcome in ("captured", "dropped", "written", "failed"):
                records.add_metric([endpoint, outcome], getattr(counters, outcome))
            files.add_metric([endpoint], counters.files)
        yield records
        yield files
        yield GaugeMetricFamily("zeroserve_inference_table_buffered",
                                "Captured records waiting to be written.", value=self._tables.buffered)
