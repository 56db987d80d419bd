"""Inference tables: captured pairs written as Parquet, read back with pyarrow and matched."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from router.observability.inference_tables import (
    CaptureConfig,
    CaptureRecord,
    InferenceTables,
    InferenceTableSettings,
)

CAPTURE = {"enabled": True, "catalog_name": "ml", "schema_name": "serving", "table_name_prefix": "fraud"}


def record(index: int, *, endpoint: str = "fraud", body: bytes | None = None,
           status: int = 200) -> CaptureRecord:
    request = body if body is not None else orjson.dumps({
        "dataframe_records": [{"amount": index}],
        "client_request_id": f"client-{index}",
        "usage_context": {"team": "risk", "attempt": index},
    })
    return CaptureRecord(
        request_id=f"req-{index}", endpoint=endpoint, served_entity="fraud-1",
        timestamp_ms=1_750_000_000_000 + index, latency_ms=1.5 + index, status_code=status,
        request_body=request, response_body=orjson.dumps({"predictions": [index % 2]}),
    )


def read_all(root: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(root.rglob("*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return sorted(rows, key=lambda row: row["timestamp_ms"])


def test_capture_config_from_the_api() -> None:
    assert CaptureConfig.from_api("fraud", None) is None
    assert CaptureConfig.from_api("fraud", {"enabled": False, "table_name_prefix": "x"}) is None
    assert CaptureConfig.from_api("fraud", CAPTURE) == CaptureConfig(True, "ml.serving.fraud_payload")
    assert CaptureConfig.from_api("fraud", {"enabled": True}) == CaptureConfig(True, "fraud_payload")
    assert CaptureConfig.from_api("fraud", {"enabled": True, "location": "s3://b/p"}) == CaptureConfig(
        True, "fraud_payload", "s3://b/p")


async def test_records_are_written_as_parquet_and_read_back(tmp_path: Path) -> None:
    tables = InferenceTables(InferenceTableSettings(uri=str(tmp_path), max_batch_records=4))
    tables.configure("fraud", CAPTURE)
    sent = [record(index) for index in range(10)]
    assert all(tables.capture(item) for item in sent)
    await tables.flush()
    rows = read_all(tmp_path)
    assert len(rows) == 10
    # Batches of 4: three files under the table's date partition, none half-written.
    files = sorted(await asyncio.to_thread(lambda: list(tmp_path.rglob("*.parquet"))))
    assert len(files) == 3
    assert {f.parent.name for f in files} == {"date=2025-06-15"}
    assert {f.parent.parent.name for f in files} == {"ml.serving.fraud_payload"}
    assert not await asyncio.to_thread(lambda: list(tmp_path.rglob("*.tmp")))
    for index, row in enumerate(rows):
        assert row["request_id"] == f"req-{index}"
        assert row["client_request_id"] == f"client-{index}"
        assert dict(row["usage_context"]) == {"team": "risk", "attempt": str(index)}
        assert row["endpoint_name"] == "fraud" and row["served_entity_name"] == "fraud-1"
        assert row["status_code"] == 200 and row["latency_ms"] == pytest.approx(1.5 + index)
        assert orjson.loads(row["request"])["dataframe_records"] == [{"amount": index}]
        assert orjson.loads(row["response"]) == {"predictions": [index % 2]}
        assert str(row["date"]) == "2025-06-15"
    assert tables.counters["fraud"].written == 10 and tables.counters["fraud"].files == 3


async def test_non_json_and_truncated_bodies(tmp_path: Path) -> None:
    tables = InferenceTables(InferenceTableSettings(uri=str(tmp_path), max_payload_bytes=16))
    tables.configure("fraud", {"enabled": True})
    tables.capture(record(0, body=b"amount\n1\n"))
    tables.capture(record(1, body=b'{"inputs": [1, 2, 3, 4, 5, 6, 7, 8], "client_request_id": "x"}'))
    await tables.flush()
    rows = read_all(tmp_path)
    assert rows[0]["request"] == "amount\n1\n" and rows[0]["client_request_id"] is None
    assert rows[1]["request_truncated"] is True and len(rows[1]["request"]) == 16
    assert rows[1]["client_request_id"] is None  # a cut body is not parsed


def test_a_full_buffer_drops_and_counts_without_blocking() -> None:
    tables = InferenceTables(InferenceTableSettings(max_buffered_records=3))
    tables.configure("fraud", CAPTURE)
    results = [tables.capture(record(index)) for index in range(5)]
    assert results == [True, True, True, False, False]
    assert tables.counters["fraud"].captured == 3 and tables.counters["fraud"].dropped == 2
    assert tables.buffered == 3


def test_the_byte_budget_bounds_the_buffer_too() -> None:
    tables = InferenceTables(InferenceTableSettings(max_buffered_bytes=1024, max_payload_bytes=10_000))
    tables.configure("fraud", CAPTURE)
    assert not tables.capture(record(0, body=b"x" * 2000))
    assert tables.counters["fraud"].dropped == 1


def test_endpoints_without_capture_are_not_buffered() -> None:
    tables = InferenceTables()
    assert not tables.enabled("fraud")
    assert not tables.capture(record(0))
    tables.configure("fraud", CAPTURE)
    tables.configure("fraud", {"enabled": False})
    assert not tables.capture(record(1)) and tables.buffered == 0


async def test_the_writer_task_flushes_on_its_own_and_on_close(tmp_path: Path) -> None:
    tables = InferenceTables(InferenceTableSettings(uri=str(tmp_path), flush_interval_s=0.05))
    tables.configure("fraud", CAPTURE)
    tables.start()
    try:
        tables.capture(record(0))
        for _ in range(100):
            if tables.counters["fraud"].written:
                break
            await asyncio.sleep(0.02)
        assert tables.counters["fraud"].written == 1
        tables.capture(record(1))
    finally:
        await tables.close()
    assert [row["request_id"] for row in read_all(tmp_path)] == ["req-0", "req-1"]


async def test_a_failing_destination_counts_failures_and_keeps_going(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the table directory should be")
    tables = InferenceTables(InferenceTableSettings(uri=str(blocker), write_attempts=2))
    tables.configure("fraud", CAPTURE)
    tables.capture(record(0))
    with caplog.at_level(logging.WARNING, logger="zeroserve.inference_tables"):
        await tables.flush()
    assert tables.counters["fraud"].failed == 1 and tables.counters["fraud"].written == 0
    assert "dropped 1 records" in caplog.text
    tables.configure("fraud", {**CAPTURE, "location": str(tmp_path / "ok")})
    tables.capture(record(1))
    await tables.flush()
    assert tables.counters["fraud"].written == 1


_DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
              "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    for key, value in _DUMMY_AWS.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        monkeypatch.setenv("ZEROSERVE_S3_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("ZEROSERVE_S3_ADDRESSING_STYLE", "path")
        import boto3

        yield boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    finally:
        server.stop()


async def test_records_go_to_an_s3_prefix(moto_s3: Any) -> None:
    moto_s3.create_bucket(Bucket="lake")
    tables = InferenceTables(InferenceTableSettings(uri="s3://lake/serving/tables"))
    tables.configure("fraud", CAPTURE)
    for index in range(3):
        tables.capture(record(index))
    await tables.close()
    listing = moto_s3.list_objects_v2(Bucket="lake", Prefix="serving/tables/")["Contents"]
    assert len(listing) == 1
    key = listing[0]["Key"]
    assert key.startswith("serving/tables/ml.serving.fraud_payload/date=2025-06-15/part-")
    body = moto_s3.get_object(Bucket="lake", Key=key)["Body"].read()
    rows = pq.read_table(io.BytesIO(body)).to_pylist()
    assert [row["client_request_id"] for row in rows] == ["client-0", "client-1", "client-2"]


async def test_a_delta_table_gets_a_commit_per_batch_and_stays_readable(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    tables = InferenceTables(InferenceTableSettings(uri=str(tmp_path), max_batch_records=4, format="delta"))
    tables.configure("fraud", CAPTURE)
    assert all(tables.capture(record(index)) for index in range(10))
    await tables.flush()
    delta = DeltaTable(str(tmp_path / "ml.serving.fraud_payload"))
    assert delta.version() == 2  # three batches of at most 4: three commits (versions 0, 1, 2)
    assert delta.metadata().partition_columns == ["date"]
    rows = sorted(delta.to_pyarrow_table().to_pylist(), key=lambda row: row["timestamp_ms"])
    assert [row["request_id"] for row in rows] == [f"req-{index}" for index in range(10)]
    assert rows[3]["client_request_id"] == "client-3" and dict(rows[3]["usage_context"])["team"] == "risk"
    # Readable without zeroserve: polars' Delta reader, and the data files are plain Parquet.
    import polars

    assert polars.read_delta(str(tmp_path / "ml.serving.fraud_payload")).height == 10
    assert sum(pq.read_table(path).num_rows for path in (tmp_path / "ml.serving.fraud_payload").rglob(
        "*.parquet")) == 10
    # Maintenance compacts the small files into one and, with a retention, drops old days.
    done = await tables.maintain()
    assert done["ml.serving.fraud_payload"]["compacted"] == 3
    compacted = DeltaTable(str(tmp_path / "ml.serving.fraud_payload"))
    assert len(compacted.file_uris()) == 1 and compacted.to_pyarrow_table().num_rows == 10
    tables.settings = InferenceTableSettings(uri=str(tmp_path), format="delta", retention_days=30)
    trimmed = await tables.maintain()  # the records are from June 2025: all older than 30 days
    assert trimmed["ml.serving.fraud_payload"]["deleted_rows"] == 10
    assert DeltaTable(str(tmp_path / "ml.serving.fraud_payload")).to_pyarrow_table().num_rows == 0


async def test_an_endpoint_can_ask_for_delta_while_the_gateway_writes_parquet(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    tables = InferenceTables(InferenceTableSettings(uri=str(tmp_path)))
    tables.configure("fraud", {**CAPTURE, "format": "delta"})
    tables.configure("churn", {"enabled": True})
    tables.capture(record(1))
    tables.capture(record(2, endpoint="churn"))
    await tables.flush()
    assert DeltaTable(str(tmp_path / "ml.serving.fraud_payload")).to_pyarrow_table().num_rows == 1
    assert not (tmp_path / "churn_payload" / "_delta_log").exists()
    assert len(list((tmp_path / "churn_payload").rglob("*.parquet"))) == 1


async def test_a_delta_table_on_s3(moto_s3: Any) -> None:
    from deltalake import DeltaTable

    from router.storage import delta_storage_options as storage_options

    moto_s3.create_bucket(Bucket="lake")
    tables = InferenceTables(InferenceTableSettings(uri="s3://lake/serving", format="delta"))
    tables.configure("fraud", CAPTURE)
    for index in range(3):
        tables.capture(record(index))
    await tables.close()
    location = "s3://lake/serving/ml.serving.fraud_payload"
    rows = DeltaTable(location, storage_options=storage_options(location)).to_pyarrow_table().to_pylist()
    assert sorted(row["client_request_id"] for row in rows) == ["client-0", "client-1", "client-2"]
    assert tables.counters["fraud"].written == 3 and tables.counters["fraud"].failed == 0
