"""Scoring a table through an endpoint, side by side in one run on one machine:

- the replica's own rows/s for 1,000-row requests, straight to it (``benchmarks.runtime_throughput``'s
  measure, no gateway): the ceiling;
- ``zeroserve batch score`` (``router.batch``) through a real gateway: 1,000-row requests, 4 in flight,
  Parquet in and out, as binary tensors (the Open Inference Protocol; its default for numeric features)
  and as JSON ``dataframe_split``;
- a plain loop of one request per row through the same gateway (on a sample: at its rate the whole
  table would take hours);
- on a local Spark (where pyspark is installed; rows that say why where not): ``router.batch.spark.
  score_dataframe`` (the executors call the endpoint, ``mapInPandas``) and ``mlflow.pyfunc.spark_udf``
  (the model loaded inside Spark's Python workers).

    python -m benchmarks.batch_scoring [--quick] [--rows N]

Goal (issue 26): the batch scorer >= 50 % of the replica's own rows/s. The endpoint's accrued cost is
shown after the run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import reliability_report as report
from benchmarks.runtime_throughput import Target, measure
from router.batch import BatchJob, score

FEATURES = 20
COLUMNS = [f"f{index}" for index in range(FEATURES)]


def write_input(root: Path, rows: int, files: int = 10) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per_file = rows // files
    for index in range(files):
        values = rng.standard_normal((per_file, FEATURES))
        pq.write_table(pa.table({"id": np.arange(index * per_file, (index + 1) * per_file),
                                 **{name: values[:, i] for i, name in enumerate(COLUMNS)}}),
                       root / f"part-{index:02d}.parquet")
    return root


def per_row_loop(gw: report.Gateway, source: Path, rows: int) -> float:
    table = pq.read_table(source).slice(0, rows)
    matrix = np.column_stack([table[name].to_numpy() for name in COLUMNS])
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {report.ADMIN_TOKEN}"},
                      timeout=60) as client:
        started = time.perf_counter()
        for row in matrix:
            body = orjson.dumps({"dataframe_split": {"columns": COLUMNS, "data": [row]}},
                                option=orjson.OPT_SERIALIZE_NUMPY)
            response = client.post("/serving-endpoints/scores/invocations", content=body,
                                   headers={"content-type": "application/json"})
            response.raise_for_status()
        return rows / (time.perf_counter() - started)


def on_spark(model: Path, source: Path, rows: int, gw: report.Gateway) -> dict[str, float | str]:
    """rows/s of ``mlflow.pyfunc.spark_udf`` (the model inside Spark's Python workers) and of
    ``router.batch.spark.score_dataframe`` (the executors call the endpoint), on one local Spark."""
    try:
        import mlflow.pyfunc
        from pyspark.sql import SparkSession
    except ImportError as exc:
        reason = f"not measured: {exc.name} is not installed (pip install 'zeroserve[spark]')"
        return {"spark_udf": reason, "score_dataframe": reason}
    from router.batch.spark import score_dataframe

    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true").getOrCreate())
    rates: dict[str, float | str] = {}
    try:
        frame = spark.read.parquet(str(source)).limit(rows).cache()
        frame.count()
        predict = mlflow.pyfunc.spark_udf(spark, str(model), env_manager="local")
        for name, scored in (
            ("spark_udf", frame.select("id", predict(*COLUMNS).alias("prediction"))),
            ("score_dataframe", score_dataframe(frame, "scores", url=gw.url, token=report.ADMIN_TOKEN,
                                                features=COLUMNS, key=["id"], result_type="long")),
        ):
            started = time.perf_counter()
            scored.write.mode("overwrite").parquet(str(source.parent / f"spark-{name}"))
            rates[name] = rows / (time.perf_counter() - started)
    finally:
        spark.stop()
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100,000 rows instead of 1,000,000")
    parser.add_argument("--rows", type=int, help="rows in the table")
    args = parser.parse_args(argv)
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    results: list[tuple[str, Any, str]] = []
    with tempfile.TemporaryDirectory(prefix="zeroserve-batch-") as tmp:
        root = Path(tmp)
        from runtime.examples import make_logreg_mlflow_sklearn

        model = make_logreg_mlflow_sklearn(root / "model", n_features=FEATURES)
        source = write_input(root / "table", rows)
        sample = pq.read_table(source).slice(0, 1000)
        thousand = orjson.dumps({"dataframe_split": {"columns": COLUMNS, "data": np.column_stack(
            [sample[name].to_numpy() for name in COLUMNS])}}, option=orjson.OPT_SERIALIZE_NUMPY)
        command = [sys.executable, "-m", "runtime", "--port", "{port}", "--concurrency", "16",
                   "--model-uri", str(model)]
        replica = Target("replica", command, "/v2/health/ready", thousand, thousand)
        print("... the replica on its own", file=sys.stderr, flush=True)
        measure(replica, 1.5 if args.quick else 5.0, root)
        ceiling = replica.results.get("rows_per_s")
        results.append(("replica alone, 1,000-row requests (c=1)", ceiling, replica.note))
        with report.gateway(root / "home") as gw:
            report.create(gw, "scores", model.as_uri(), optimization="auto", min_provisioned_concurrency=4,
                          autoscaling={"container_concurrency": 16})
            report.wait_until(lambda: report.ready_replicas(gw, "scores") >= 1, 120, "the endpoint")
            for protocol, how in (("v2-binary", "binary tensors (its default for numbers)"),
                                  ("json", "JSON dataframe_split")):
                print(f"... zeroserve batch score, {rows:,} rows, {protocol}", file=sys.stderr, flush=True)
                result = score(BatchJob(endpoint="scores", input=str(source), output=str(root / protocol),
                                        url=gw.url, token=report.ADMIN_TOKEN, key=("id",), features=COLUMNS,
                                        batch_rows=1000, concurrency=4, protocol=protocol))
                written = pq.read_metadata(next((root / protocol).glob("part-*.parquet"))).num_rows
                results.append((f"zeroserve batch score, {how}", result.rows_per_s,
                                f"{result.batches} requests of 1,000 rows, {result.retries} retries, "
                                f"parts of {written:,} rows"))
            loop_rows = 500 if args.quick else 2000
            print(f"... a loop of one request per row ({loop_rows:,} rows)", file=sys.stderr, flush=True)
            loop_rate = per_row_loop(gw, source, loop_rows)
            results.append((f"per-row loop ({loop_rows:,}-row sample)", loop_rate, ""))
            print("... Spark: mlflow.pyfunc.spark_udf and score_dataframe", file=sys.stderr, flush=True)
            spark_rows = min(rows, 200_000)
            spark = on_spark(model, source, spark_rows, gw)
            results.append((f"zeroserve score_dataframe, Spark local[2] ({spark_rows:,} rows)",
                            spark["score_dataframe"], "executors call the endpoint"))
            results.append((f"mlflow spark_udf, Spark local[2] ({spark_rows:,} rows)", spark["spark_udf"],
                            "the model inside Spark's Python workers"))
            with gw.client() as client:
                config = client.get("/api/2.0/serving-endpoints/scores").json()["config"]
            cost = (config["served_entities"][0].get("state") or {}).get("cost")
    print(f"\nscoring {rows:,} rows of a 20-feature logistic regression (MLflow sklearn, served as ONNX)")
    print("| how | rows/s | vs the replica alone | note |\n|---|---:|---:|---|")
    for name, rate, note in results:
        if isinstance(rate, str) or rate is None:
            print(f"| {name} | - | - | {rate or note} |")
            continue
        share = f"{rate / ceiling:.2f}x" if ceiling else "-"
        print(f"| {name} | {rate:,.0f} | {share} | {note} |")
    batch_rate = results[1][1]
    if ceiling and isinstance(batch_rate, float):
        verdict = "met" if batch_rate >= 0.5 * ceiling else "MISSED"
        print(f"\nbatch scorer / replica alone: {batch_rate / ceiling:.2f} (goal >= 0.50: {verdict})")
    print(f"the endpoint's cost so far: {cost}")


if __name__ == "__main__":
    main()
