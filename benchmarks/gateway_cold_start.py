"""First answer from zero, through a real gateway: what a client waits for when its request reaches an
endpoint scaled to zero (the model already in the cache, the warm pool at its defaults).

For each model, a gateway process (``zeroserve serve``) with the local backend serves an endpoint that
scales to zero two seconds after its last request; each run waits until it is at zero, sends one query
and times the answer. Models: a small ONNX model (LogisticRegression, 20 features) and the quick start's
example (an MLflow pyfunc around a scikit-learn pipeline), the latter with the warm pool preloading only
ONNX (the default) and preloading scikit-learn too (what ``zeroserve up --example`` sets). Beside each
row, the same replica started by the local backend alone (no gateway), and what the gateway adds.

    python -m benchmarks.gateway_cold_start [--quick] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks.autoscaler_replay import admin_client, start_gateway, stop_gateway


@contextmanager
def gateway(home: Path, preload: str) -> Iterator[str]:
    previous = os.environ.get("ZEROSERVE_WARM_POOL_PRELOAD")
    os.environ["ZEROSERVE_WARM_POOL_PRELOAD"] = preload
    try:
        process, url = start_gateway(home, None)
    finally:
        if previous is None:
            os.environ.pop("ZEROSERVE_WARM_POOL_PRELOAD", None)
        else:
            os.environ["ZEROSERVE_WARM_POOL_PRELOAD"] = previous
    try:
        yield url
    finally:
        stop_gateway(process)


def at_zero(client: httpx.Client, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = client.get("/api/2.0/serving-endpoints/ep").raise_for_status().json()
        replicas = state["config"]["served_entities"][0]["state"]["replicas"]
        if replicas["desired"] == 0 and replicas["ready"] + replicas["starting"] + replicas["draining"] == 0:
            return
        time.sleep(0.2)
    raise TimeoutError("the endpoint did not scale to zero")


def first_answers(url: str, model: Path, query: dict[str, Any], runs: int) -> list[float]:
    """Seconds from sending a query to an endpoint at zero to its answer, ``runs`` times."""
    with admin_client(url) as client:
        entity = {"entity_name": model.as_uri(), "entity_version": "1", "name": "m",
                  "scale_to_zero_enabled": True,
                  "autoscaling": {"stable_window_s": 2, "scale_to_zero_grace_s": 0}}
        client.post("/api/2.0/serving-endpoints",
                    json={"name": "ep", "config": {"served_entities": [entity]}}).raise_for_status()
        # An uncounted first run fetches the model into the cache and loads the libraries' files once.
        client.post("/serving-endpoints/ep/invocations", json=query, timeout=120).raise_for_status()
        seconds = []
        for _ in range(runs):
            at_zero(client)
            time.sleep(0.5)
            started = time.perf_counter()
            client.post("/serving-endpoints/ep/invocations", json=query, timeout=120).raise_for_status()
            seconds.append(time.perf_counter() - started)
        return seconds


def replica_alone(model: Path, query: dict[str, Any], preload: str, runs: int) -> list[float]:
    """Seconds from asking the local backend for a replica (a warm pool worker, model cached) to its
    first answer, without a gateway: what the gateway's cold path is measured against."""
    import asyncio

    from autoscaler.backends.local import LocalBackend
    from autoscaler.spec import EntitySpec
    from autoscaler.types import EntityKey

    async def measure() -> list[float]:
        backend = LocalBackend(warm_pool_size=1, preload=tuple(preload.split(",")), unix_sockets=False)
        await backend.open()
        spec = EntitySpec(model_uri=model.as_uri(), served_name="m")
        seconds = []
        try:
            async with httpx.AsyncClient(timeout=120) as client:
                for run in range(runs + 1):  # the first, uncounted, fills the cache
                    assert backend.pool is not None
                    await backend.pool.wait_full()
                    started = time.perf_counter()
                    info = await backend.start_replica(EntityKey("ep", "m"), spec, f"r{run}")
                    (await client.post(f"{info.url}/invocations", json=query)).raise_for_status()
                    if run:
                        seconds.append(time.perf_counter() - started)
                    await backend.stop_replica(info.replica_id, 5.0)
        finally:
            await backend.close()
        return seconds

    return asyncio.run(measure())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 runs a row")
    parser.add_argument("--runs", type=int, help="runs a row [7; quick 3]")
    args = parser.parse_args(argv)
    runs = args.runs or (3 if args.quick else 7)
    from runtime.examples import logreg_rows, make_logreg_onnx, make_propensity_mlflow, propensity_request

    print(f"first answer from zero through a real gateway, model cached, {runs} runs a row; 'replica'"
          " is the same start without a gateway (local backend, warm pool), 'gateway adds' the difference")
    print(f"{'model':<36} {'warm pool preloads':<20} {'p50 ms':>8} {'min ms':>8} {'max ms':>8}"
          f" {'replica ms':>10} {'gateway adds':>12}")
    with tempfile.TemporaryDirectory(prefix="zeroserve-gateway-cold-") as scratch:
        root = Path(scratch)
        onnx = make_logreg_onnx(root / "logreg")
        example = make_propensity_mlflow(root / "propensity")
        rows: list[tuple[str, str, Path, dict[str, Any]]] = [
            ("ONNX logistic regression", "onnx", onnx, {"inputs": logreg_rows(20, 1).tolist()}),
            ("quick-start example (pyfunc)", "onnx", example, propensity_request(1)),
            ("quick-start example (pyfunc)", "onnx,sklearn", example, propensity_request(1)),
        ]
        for index, (name, preload, model, query) in enumerate(rows):
            try:
                with gateway(root / f"home-{index}", preload) as url:
                    seconds = first_answers(url, model, query, runs)
            except (RuntimeError, TimeoutError, httpx.HTTPError) as error:
                print(f"{name:<36} {preload:<20} failed: {error}")
                continue
            milliseconds = [value * 1000 for value in seconds]
            try:
                alone = statistics.median(replica_alone(model, query, preload, runs)) * 1000
                alone_text, adds = f"{alone:>10.0f}", f"{statistics.median(milliseconds) - alone:>12.0f}"
            except Exception as error:  # the gateway row stands; say why this column is missing
                alone_text, adds = f"{'failed':>10}", f" {error}"
            print(f"{name:<36} {preload:<20} {statistics.median(milliseconds):>8.0f} "
                  f"{min(milliseconds):>8.0f} {max(milliseconds):>8.0f} {alone_text} {adds}")


if __name__ == "__main__":
    main()
