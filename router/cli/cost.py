"""``zeroserve endpoints cost NAME --trace FILE``: what an endpoint's scaling settings would cost on a
recorded trace, before the money is spent.

The trace is the endpoint's traffic: its inference table (Parquet, as the gateway writes it), or a CSV
or JSON-lines file with a ``timestamp_ms`` (or ``timestamp``, in seconds) and optionally a
``latency_ms`` per request. It is replayed through the real scaling policy (``autoscaler.replay``) for
the served entity's settings and a few alternatives, and each is priced as the gateway prices replicas
(``router.observability.cost``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import click
import numpy as np

from router.cli._client import GatewayClient, gateway_options, print_json
from router.cli._render import console
from router.cli.endpoints import API, endpoints


@dataclasses.dataclass(frozen=True)
class Trace:
    arrivals_s: np.ndarray  # seconds from the first request, sorted
    service_s: np.ndarray  # seconds each request took
    start_unix_s: float


def load_trace(path: Path, served: str | None, service_ms: float | None) -> Trace:
    """The requests of ``path`` (those of ``served`` when the file names served entities)."""
    rows = _rows(path)
    if served is not None and rows and "served_entity" in rows[0]:
        rows = [row for row in rows if row.get("served_entity") == served]
    times: list[float] = []
    latencies: list[float] = []
    for number, row in enumerate(rows, start=1):
        try:
            if row.get("timestamp_ms") not in (None, ""):
                times.append(float(row["timestamp_ms"]) / 1000)
            elif row.get("timestamp") not in (None, ""):
                times.append(float(row["timestamp"]))
            else:
                raise click.BadParameter(f"request {number} has no timestamp_ms or timestamp",
                                         param_hint="--trace")
            latency = row.get("latency_ms")
            if service_ms is not None:
                latencies.append(service_ms / 1000)
            elif latency not in (None, ""):
                latencies.append(float(latency) / 1000)
            else:
                raise click.BadParameter(f"request {number} has no latency_ms: give --service-ms",
                                         param_hint="--trace")
        except (TypeError, ValueError) as error:
            raise click.BadParameter(f"request {number}: {error}", param_hint="--trace") from None
    if not times:
        which = f" for served entity {served}" if served else ""
        raise click.BadParameter(f"{path} holds no requests{which}", param_hint="--trace")
    order = np.argsort(np.array(times), kind="stable")
    arrivals = np.array(times)[order]
    service = np.array(latencies)[order]
    if not np.all(np.isfinite(arrivals)) or not np.all(np.isfinite(service)) or np.any(service < 0):
        raise click.BadParameter("timestamps and latencies must be finite, latencies >= 0",
                                 param_hint="--trace")
    return Trace(arrivals - arrivals[0], service, float(arrivals[0]))


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise click.BadParameter(f"{path} does not exist", param_hint="--trace")
    suffix = path.suffix.lower()
    # An inference table is a folder of date-partitioned Parquet files: pyarrow reads it whole.
    if suffix == ".parquet" or path.is_dir():
        try:
            import pyarrow.parquet as parquet
        except ImportError:
            raise click.UsageError("reading a Parquet trace needs pyarrow (pip install pyarrow)") from None
        table = parquet.read_table(path)
        wanted = [name for name in ("timestamp_ms", "timestamp", "latency_ms", "served_entity")
                  if name in table.column_names]
        return table.select(wanted).to_pylist()
    with path.open(newline="") as handle:
        if suffix == ".csv":
            return list(csv.DictReader(handle))
        rows = []
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise click.BadParameter(f"line {number} is not JSON: {error}",
                                             param_hint="--trace") from None
        return rows


def _entity(endpoint: dict[str, Any], served: str | None) -> dict[str, Any]:
    entities = (endpoint.get("config") or endpoint.get("pending_config") or {}).get("served_entities", [])
    if served is None:
        if len(entities) != 1:
            names = ", ".join(entity["name"] for entity in entities)
            raise click.BadParameter(f"endpoint has served entities {names}: name one", param_hint="--served")
        return entities[0]
    for entity in entities:
        if entity["name"] == served:
            return entity
    raise click.BadParameter(f"endpoint has no served entity {served}", param_hint="--served")


@endpoints.command("cost")
@click.argument("name")
@click.option("--trace", "trace_path", required=True, type=click.Path(path_type=Path),
              help="Recorded requests: an inference table (Parquet), or CSV / JSON lines with timestamp_ms "
              "(or timestamp, seconds) and latency_ms.")
@click.option("--served", help="The served entity to price [default: the endpoint's only one].")
@click.option("--service-ms", type=click.FloatRange(min=0, min_open=True),
              help="Time one request takes on a replica, for traces without latency_ms (an inference "
              "table's latency includes time queued in the gateway: an upper bound).")
@click.option("--cold-start-s", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds from asking for a replica to its being ready.")
@gateway_options
def cost(client: GatewayClient, output: str, name: str, trace_path: Path, served: str | None,
         service_ms: float | None, cold_start_s: float) -> None:
    """Replay a recorded trace through endpoint NAME's scaling settings and a few alternatives:
    replicas, cold starts, p99 queueing and cost of each."""
    from autoscaler.replay import alternatives, replay
    from autoscaler.spec import AutoscalingSpec
    from router.observability.cost import CostSettings

    endpoint = client.call("GET", f"{API}/{name}")
    entity = _entity(endpoint, served)
    # The view shows every effective setting (and derived ones): the spec takes those it is built from.
    accepted = {field.name for field in dataclasses.fields(AutoscalingSpec) if field.init}
    settings = {key: value for key, value in (entity.get("autoscaling") or {}).items() if key in accepted}
    spec = AutoscalingSpec(**settings)
    trace = load_trace(trace_path, entity["name"], service_ms)
    prices = CostSettings()
    price_per_hour = prices.price_per_hour(entity.get("workload_type", "CPU"))
    options = alternatives(spec)
    # Long enough after the last request for every option to scale back to its floor.
    tail_s = max(option.stable_window_s + option.scale_to_zero_grace_s for _, option in options) + 10.0
    duration_s = float(trace.arrivals_s[-1] + trace.service_s.max()) + tail_s
    rows: list[dict[str, Any]] = []
    for label, option in options:
        result = replay(trace.arrivals_s, trace.service_s, option, duration_s=duration_s,
                        cold_start_s=cold_start_s)
        rows.append({
            "option": label,
            "replica_starts": result.starts,
            "peak_replicas": result.peak_replicas,
            "replica_seconds": round(result.replica_seconds, 1),
            "p99_queue_ms": round(result.p99_wait_ms, 1),
            "cost": round(result.replica_seconds / 3600 * price_per_hour, 4),
        })
    summary = {"endpoint": name, "served_entity": entity["name"], "requests": len(trace.arrivals_s),
               "trace_seconds": round(float(trace.arrivals_s[-1]), 1), "currency": prices.currency,
               "price_per_replica_hour": price_per_hour, "cold_start_s": cold_start_s, "options": rows}
    if output == "json":
        print_json(summary)
        return
    from rich.table import Table

    span = summary["trace_seconds"]
    table = Table(title=f"{name}/{entity['name']}: {len(trace.arrivals_s):,} requests over {span:g} s, "
                  f"{price_per_hour:g} {prices.currency} per replica-hour, cold start {cold_start_s:g} s")
    for column in ("option", "replica starts", "peak replicas", "replica-seconds", "p99 queue ms",
                   f"cost ({prices.currency})"):
        table.add_column(column, justify="left" if column == "option" else "right")
    for row in rows:
        table.add_row(row["option"], str(row["replica_starts"]), str(row["peak_replicas"]),
                      f"{row['replica_seconds']:,.0f}", f"{row['p99_queue_ms']:,.1f}",
                      _money(row["cost"]))
    console.print(table)


def _money(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "-"
