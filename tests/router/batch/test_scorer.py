"""Batch scoring against a real gateway process serving a real model: Parquet and Delta, local and on S3
(moto on loopback), resumed after a SIGKILL, retried through a scripted server that answers 503."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from starlette.types import Receive, Scope, Send

from router.batch import BatchJob, BatchScoringError, score
from runtime.examples import make_logreg_mlflow_sklearn
from tests.router._servers import read_body, serving
from tests.router.gateway_process import ADMIN_TOKEN, GatewayProcess, s3_models, wait_for

pytestmark = pytest.mark.slow
FEATURES = 6
COLUMNS = [f"f{index}" for index in range(FEATURES)]
API = "/api/2.0/serving-endpoints"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("batch")
    model = make_logreg_mlflow_sklearn(root / "model", n_features=FEATURES)
    with GatewayProcess(root / "home") as gw, gw.client(timeout=60) as client:
        entity = {"name": "m", "entity_name": model.as_uri(), "min_provisioned_concurrency": 4}
        created = client.post(API, json={"name": "churn", "config": {"served_entities": [entity]}})
        assert created.status_code == 200, created.text
        wait_for(lambda: client.get(f"{API}/churn").json()["state"]["ready"] == "READY", 120, "ready")
        yield gw


def table(rows: int, start: int = 0) -> pa.Table:
    values = np.random.default_rng(start).standard_normal((rows, FEATURES))
    return pa.table({"customer_id": np.arange(start, start + rows), "segment": ["a"] * rows,
                     **{name: values[:, index] for index, name in enumerate(COLUMNS)}})


def parquet_folder(root: Path, sizes: list[int]) -> Path:
    root.mkdir(parents=True)
    start = 0
    for index, size in enumerate(sizes):
        pq.write_table(table(size, start), root / f"day-{index}.parquet")
        start += size
    return root


def direct_scores(gw: GatewayProcess, rows: pa.Table) -> list[Any]:
    with gw.client(timeout=60) as client:
        body = {"dataframe_split": {"columns": COLUMNS,
                                    "data": np.column_stack([rows[c].to_numpy() for c in COLUMNS]).tolist()}}
        answer = client.post("/serving-endpoints/churn/invocations", json=body)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["predictions"])


def job(gw: GatewayProcess, source: str, output: str, **extra: Any) -> BatchJob:
    settings: dict[str, Any] = {"key": ("customer_id",), "features": COLUMNS, **extra}
    return BatchJob(endpoint="churn", input=source, output=output, url=gw.url, token=ADMIN_TOKEN, **settings)


def test_a_parquet_folder_is_scored_once_per_row_with_its_keys(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    source = parquet_folder(tmp_path / "in", [700, 1100, 450])  # batches cross file boundaries
    result = score(job(gateway, str(source), str(tmp_path / "out"), batch_rows=500, part_rows=1000,
                       concurrency=3))
    assert (result.rows, result.scored, result.skipped, result.batches) == (2250, 2250, 0, 5)
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 3  # two batches a part
    written = pq.read_table(tmp_path / "out").sort_by("customer_id")
    assert written.column_names == ["customer_id", "prediction"]
    assert written["customer_id"].to_pylist() == list(range(2250))
    everything = pq.read_table(source).sort_by("customer_id")
    assert written["prediction"].to_pylist() == direct_scores(gateway, everything)
    # Numeric features went as binary tensors (the Open Inference Protocol); JSON answers the same.
    as_json = score(job(gateway, str(source), str(tmp_path / "json"), batch_rows=500, protocol="json"))
    assert as_json.scored == 2250
    assert pq.read_table(tmp_path / "json").sort_by("customer_id").equals(written)


def test_an_interrupted_run_resumes_without_scoring_a_row_twice(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    source = parquet_folder(tmp_path / "in", [4000, 4000])
    out = tmp_path / "out"
    command = [sys.executable, "-c", "from router.cli import main; main()", "batch", "score", "churn",
               "--input", str(source), "--output", str(out), "--key", "customer_id", "--batch-rows", "50",
               "--part-rows", "100",
               "--concurrency", "1", "--url", gateway.url, "--token", ADMIN_TOKEN,
               *(option for name in COLUMNS for option in ("--feature", name))]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(list(out.glob("part-*.parquet"))) >= 3, 60, "a few parts written")
        first.send_signal(signal.SIGKILL)  # no clean-up runs: as a crash or a lost machine would
    finally:
        first.wait(timeout=30)
    assert len(list(out.glob("part-*.parquet"))) < 80  # stopped part way
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    said = " ".join(resumed.stdout.split())  # as a terminal would show it, unwrapped
    assert "already there (resumed)" in said and "of 8,000 rows" in said, said
    written = pq.read_table(out, columns=["customer_id", "prediction"]).sort_by("customer_id")
    assert written["customer_id"].to_pylist() == list(range(8000))  # none missing, none twice
    assert not list(out.glob(".*.tmp"))  # what the kill cut short never became a part, and is gone
    # The same output from other input is refused, not mixed in.
    other = parquet_folder(tmp_path / "other", [10])
    with pytest.raises(BatchScoringError, match="holds the output of another run"):
        score(job(gateway, str(other), str(out), batch_rows=50, part_rows=100))


def test_delta_in_and_out(gateway: GatewayProcess, tmp_path: Path) -> None:
    from deltalake import DeltaTable, write_deltalake

    write_deltalake(str(tmp_path / "customers"), table(1200))
    write_deltalake(str(tmp_path / "customers"), table(300, start=1200), mode="append")
    result = score(job(gateway, str(tmp_path / "customers"), str(tmp_path / "scores"), batch_rows=400,
                       part_rows=400))
    assert result.scored == 1500
    scores = DeltaTable(str(tmp_path / "scores")).to_pyarrow_table().sort_by("customer_id")
    assert scores["customer_id"].to_pylist() == list(range(1500))
    assert set(scores["_part"].to_pylist()) == {0, 1, 2, 3}
    again = score(job(gateway, str(tmp_path / "customers"), str(tmp_path / "scores"), batch_rows=400,
                      part_rows=400))
    assert (again.scored, again.skipped) == (0, 1500)  # everything was there already


def test_parquet_on_s3_in_and_out(
    gateway: GatewayProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with s3_models("tables", {}) as environment:
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        s3 = boto3.client("s3", endpoint_url=environment["ZEROSERVE_S3_ENDPOINT_URL"],
                          region_name="us-east-1")
        local = parquet_folder(tmp_path / "in", [300, 300])
        for path in sorted(local.iterdir()):
            s3.upload_file(str(path), "tables", f"customers/{path.name}")
        result = score(job(gateway, "s3://tables/customers", "s3://tables/scores", batch_rows=250,
                           part_rows=250))
        assert result.scored == 600
        listed = s3.list_objects_v2(Bucket="tables", Prefix="scores/")["Contents"]
        assert sorted(item["Key"] for item in listed) == [
            "scores/_zeroserve_batch.json", "scores/part-000000.parquet", "scores/part-000001.parquet",
            "scores/part-000002.parquet"]


async def flaky(scope: Scope, receive: Receive, send: Send) -> None:
    """A stand-in endpoint (a scripted server: the gateway's own 503s cannot be scheduled): every other
    request is a 503 with Retry-After 0, the rest echo one prediction per row."""
    if scope["type"] != "http":
        return
    body = await read_body(receive)
    flaky.calls += 1  # type: ignore[attr-defined]
    if flaky.calls % 2:  # type: ignore[attr-defined]
        answer, status = b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}', 503
        headers = [(b"retry-after", b"0")]
    else:
        import orjson

        rows = len(orjson.loads(body)["dataframe_split"]["data"])
        answer, status, headers = orjson.dumps({"predictions": [1.0] * rows}), 200, []
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *headers]})
    await send({"type": "http.response.body", "body": answer})


async def test_503s_are_retried_with_back_off(tmp_path: Path) -> None:
    from router.batch import score_async

    flaky.calls = 0  # type: ignore[attr-defined]
    source = parquet_folder(tmp_path / "in", [250])
    async with serving(flaky) as port:
        result = await score_async(BatchJob(endpoint="churn", input=str(source), output=str(tmp_path / "out"),
                                            url=f"http://127.0.0.1:{port}", batch_rows=100))
    assert (result.scored, result.retries) == (250, 3)
    assert pq.read_table(tmp_path / "out")["prediction"].to_pylist() == [1.0] * 250


def test_a_refused_batch_stops_the_run_naming_it_and_the_endpoints_reason(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    source = parquet_folder(tmp_path / "in", [250])
    with pytest.raises(BatchScoringError, match=r"batch 0: the endpoint answered 400: .*f1"):
        score(job(gateway, str(source), str(tmp_path / "bad"), features=["f0", "segment"]))
    with pytest.raises(BatchScoringError, match=r"columns \['nope'\] are not in the input"):
        score(job(gateway, str(source), str(tmp_path / "bad2"), features=["nope"]))


# pyspark warns that it does not "fully support" pandas 3 (the project's); mapInPandas, all this uses, works.
@pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
def test_a_spark_dataframe_is_scored_from_the_executors(gateway: GatewayProcess, tmp_path: Path) -> None:
    pytest.importorskip("pyspark", reason="the spark extra is not installed")
    from pyspark.sql import SparkSession

    from router.batch.spark import score_dataframe

    source = parquet_folder(tmp_path / "in", [600, 600])
    spark = (SparkSession.builder.master("local[2]").appName("zeroserve-test")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2").getOrCreate())
    try:
        frame = spark.read.parquet(str(source)).repartition(3)
        scored = score_dataframe(frame, "churn", url=gateway.url, token=ADMIN_TOKEN, features=COLUMNS,
                                 key=["customer_id"], result_type="long", batch_rows=250)
        rows = sorted((row.customer_id, row.prediction) for row in scored.collect())
    finally:
        spark.stop()
    assert [customer for customer, _ in rows] == list(range(1200))
    everything = pq.read_table(source).sort_by("customer_id")
    assert [prediction for _, prediction in rows] == direct_scores(gateway, everything)
