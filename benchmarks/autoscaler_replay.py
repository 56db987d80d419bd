"""A spike from idle, for real: the same trace through a gateway with the local backend and through the
autoscaler simulation (``autoscaler.replay``), side by side, to show that the simulation holds.

A model that takes ``--service-ms`` per call (a pyfunc that sleeps, so two cores can carry the load)
is served by an endpoint that scales to zero, with a short stable window so that a run takes a minute or
two. The entity first serves a little traffic (so, as in production, its service time is known), goes
back to zero, then takes a Poisson burst of ``--rate`` requests a second for ``--burst-s`` seconds from
an open-loop client (arrivals do not wait for answers), and goes back to zero again. The gateway's own
figures give the replica starts (its scaling decisions) and replica-seconds (its cost ledger); the
client gives the requests, errors and latencies. The simulation replays the same arrival times with the
measured cold start; the previous policy (no drain-aware estimate) runs in the simulation alone.

    python -m benchmarks.autoscaler_replay [--quick] [--rate RPS] [--burst-s S] [--service-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from autoscaler.replay import replay
from autoscaler.spec import AutoscalingSpec

ADMIN_TOKEN = "bench-admin-" + "r" * 32
ENDPOINT = "spiky"
SERVED = "slow-1"
CONCURRENCY = 4
GRACE_S = 5.0
_CLI = "import sys; from router.cli import cli, serve; sys.argv[0] = 'zeroserve'; cli()"

# A model from code: each call sleeps the service time (the GIL is free meanwhile), whatever its rows.
_MODEL_CODE = """
import time

import mlflow
import pandas as pd

_SERVICE_S = {service_s!r}


class Slow(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):
        time.sleep(_SERVICE_S)
        return model_input["x"] * 2.0


mlflow.models.set_model(Slow())
"""


@dataclass
class Sent:
    at: float  # seconds from the run's start
    latency_s: float
    status: int


@dataclass
class RealRun:
    sent: list[Sent] = field(default_factory=list)
    decisions: dict[tuple[int, int, int, str], None] = field(default_factory=dict)
    replica_seconds: float = 0.0
    duration_s: float = 0.0
    cold_start_s: float = 0.0


def make_model(directory: Path, service_ms: float) -> Path:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    code = directory / "slow_model.py"
    code.write_text(_MODEL_CODE.format(service_s=service_ms / 1000))
    model = directory / "slow"
    signature = ModelSignature(inputs=Schema([ColSpec("double", "x")]), outputs=Schema([ColSpec("double")]))
    with warnings.catch_warnings():  # mlflow's own deprecation and style warnings while saving
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(str(model), python_model=str(code), signature=signature,
                                 pip_requirements=["mlflow"])
    return model


def start_gateway(home: Path, tree: Path | None) -> tuple[subprocess.Popen[bytes], str]:
    home.mkdir(parents=True)
    env = {**os.environ, "ZEROSERVE_HOME": str(home), "ZEROSERVE_ADMIN_TOKEN": ADMIN_TOKEN}
    if tree is not None:
        # The gateway, and the replicas it starts (they inherit environment and working directory),
        # from that tree: first on the path, and the working directory too, which `python -c` and
        # `python -m` put before everything (this checkout would win otherwise).
        env["PYTHONPATH"] = str(tree.resolve())
    env.pop("ZEROSERVE_URL", None)
    log = open(home / "gateway.log", "ab")  # noqa: SIM115 - the process keeps it; closed with the process
    process = subprocess.Popen([sys.executable, "-c", _CLI, "serve", "--host", "127.0.0.1", "--port", "0"],
                               env=env, stdout=log, stderr=subprocess.STDOUT,
                               cwd=tree.resolve() if tree is not None else None)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}; see {home / 'gateway.log'}")
        try:
            info = json.loads((home / "gateway.json").read_text())
            if info.get("pid") == process.pid and httpx.get(f"{info['url']}/readyz", timeout=2).is_success:
                return process, str(info["url"])
        except (OSError, ValueError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    process.kill()
    raise TimeoutError("the gateway did not come up within 90 s")


def create_endpoint(client: httpx.Client, model: Path, stable_window_s: float) -> AutoscalingSpec:
    autoscaling = {"container_concurrency": CONCURRENCY, "stable_window_s": stable_window_s,
                   "scale_to_zero_grace_s": GRACE_S}
    body = {"name": ENDPOINT, "config": {"served_entities": [{
        "entity_name": model.as_uri(), "entity_version": "1", "name": SERVED, "scale_to_zero_enabled": True,
        "max_provisioned_concurrency": 400, "optimization": "off", "autoscaling": autoscaling}]}}
    client.post("/api/2.0/serving-endpoints", json=body).raise_for_status()
    return AutoscalingSpec(scale_to_zero_enabled=True, max_provisioned_concurrency=400,
                           container_concurrency=CONCURRENCY, stable_window_s=stable_window_s,
                           scale_to_zero_grace_s=GRACE_S)


def admin_client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)


def entity_state(client: httpx.Client) -> dict[str, Any]:
    endpoint = client.get(f"/api/2.0/serving-endpoints/{ENDPOINT}").raise_for_status().json()
    state: dict[str, Any] = endpoint["config"]["served_entities"][0]["state"]
    return state


async def send_all(url: str, offsets: np.ndarray, run: RealRun, t0: float) -> None:
    """Open loop: each request leaves at its offset from ``t0`` whatever the earlier ones are doing."""
    body = json.dumps({"dataframe_records": [{"x": 1.0}]}).encode()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:

        async def one(offset: float) -> None:
            await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
            started = time.monotonic()
            try:
                response = await client.post(f"/serving-endpoints/{ENDPOINT}/invocations", content=body)
                status = response.status_code
            except httpx.HTTPError:
                status = 0
            run.sent.append(Sent(started - t0, time.monotonic() - started, status))

        await asyncio.gather(*(one(float(offset)) for offset in offsets))


def wait_for_zero(client: httpx.Client, run: RealRun, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = entity_state(client)
        collect(client, run)
        replicas = state["replicas"]
        if replicas["desired"] == 0 and replicas["ready"] + replicas["starting"] + replicas["draining"] == 0:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the endpoint did not scale back to zero within {timeout_s:g} s")


def collect(client: httpx.Client, run: RealRun) -> None:
    """The gateway's last 50 scaling events (the endpoint view shows 5: a burst of pokes makes more)."""
    events = client.get(f"/api/2.0/zeroserve/timeseries/{ENDPOINT}").raise_for_status().json()
    for event in events.get("scaling_events", []):
        key = (event["timestamp_ms"], event["previous"], event["desired"], event["reason"])
        run.decisions[key] = None


def poll_decisions(url: str, run: RealRun, stop: threading.Event) -> None:
    with admin_client(url) as client:
        while not stop.wait(0.25):
            collect(client, run)


def real_run(scratch: Path, service_ms: float, stable_window_s: float, warm_offsets: np.ndarray,
             burst_offsets: np.ndarray, tree: Path | None) -> tuple[RealRun, AutoscalingSpec, float]:
    process, url = start_gateway(scratch / "home", tree)
    run = RealRun()
    try:
        with admin_client(url) as client:
            spec = create_endpoint(client, make_model(scratch, service_ms), stable_window_s)
            t0 = time.monotonic()
            # The earlier traffic: the entity learns its service time, then goes back to zero.
            asyncio.run(send_all(url, warm_offsets, run, t0))
            wait_for_zero(client, run, timeout_s=stable_window_s * 3 + 60)
            # Some seconds after the zero: the simulation's ticks fall elsewhere, and it must be at zero too.
            burst_at = time.monotonic() - t0 + 5.0
            # The view keeps the last few decisions: a thread collects them while the burst runs.
            stop = threading.Event()
            watcher = threading.Thread(target=poll_decisions, args=(url, run, stop), daemon=True)
            watcher.start()
            asyncio.run(send_all(url, burst_offsets + burst_at, run, t0))
            stop.set()
            watcher.join()
            wait_for_zero(client, run, timeout_s=stable_window_s * 3 + 120)
            run.duration_s = time.monotonic() - t0
            cost = entity_state(client).get("cost") or {}
            run.replica_seconds = float(cost.get("replica_seconds", 0.0))
            first = min((s for s in run.sent if s.at >= burst_at - 1e-3), key=lambda s: s.at)
            run.cold_start_s = max(0.0, first.latency_s - service_ms / 1000)
            return run, spec, burst_at
    finally:
        stop_gateway(process)


def stop_gateway(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the gateway drains and stops its replicas), SIGKILL if it is not gone in a minute."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def poisson(rate: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    gaps = rng.exponential(1.0 / rate, int(rate * duration_s * 1.5) + 20)
    times = np.cumsum(gaps)
    return times[times < duration_s]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a shorter, smaller burst and shorter windows")
    # Each request costs the gateway, the replica (an MLflow pyfunc: pandas in and out) and the client
    # some CPU: on a 2-core machine much above 40 req/s the run measures the CPU, not the scaling.
    parser.add_argument("--rate", type=float, help="burst requests per second [40; quick 25]")
    parser.add_argument("--burst-s", type=float, help="burst length in seconds [40; quick 15]")
    parser.add_argument("--stable-window-s", type=float, help="the entity's stable window [60; quick 30]")
    parser.add_argument("--service-ms", type=float, default=50.0, help="time the model takes per call")
    parser.add_argument("--baseline", type=Path, action="append", default=[], metavar="DIR",
                        help="also run the gateway from this source tree (a checkout of an earlier commit)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--verbose", action="store_true", help="print each real run's scaling decisions")
    args = parser.parse_args(argv)
    rate = args.rate or (25.0 if args.quick else 40.0)
    burst_s = args.burst_s or (15.0 if args.quick else 40.0)
    stable_window_s = args.stable_window_s or (30.0 if args.quick else 60.0)
    rng = np.random.default_rng(args.seed)
    warm = poisson(5.0, 5.0, rng)
    burst = poisson(rate, burst_s, rng)
    print(f"spike from idle, real vs simulated: {rate:g} req/s for {burst_s:g} s, model "
          f"{args.service_ms:g} ms per call, C={CONCURRENCY}, stable window {stable_window_s:g} s, "
          f"grace {GRACE_S:g} s, seed {args.seed}")
    header = (f"{'run':<36} {'requests':>9} {'errors':>7} {'replica starts':>15} {'replica-s':>10} "
              f"{'p50 ms':>8} {'p99 ms':>9}")
    lines = []
    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    trees += [(f"baseline {tree.name}", tree) for tree in args.baseline]
    for label, tree in trees:
        with tempfile.TemporaryDirectory(prefix="zeroserve-replay-") as scratch:
            try:
                run, spec, burst_at = real_run(Path(scratch), args.service_ms, stable_window_s, warm, burst,
                                               tree)
            except (RuntimeError, TimeoutError, httpx.HTTPError) as error:
                lines.append(f"{'real, ' + label:<36} failed: {error}")
                continue
        lines += _rows(label, run, spec, burst_at, len(warm), simulate=tree is None)
        if args.verbose:
            first_ms = min(at for at, *_ in run.decisions) if run.decisions else 0
            print(f"scaling decisions, real, {label} (seconds from the first):")
            for at_ms, before, after, reason in sorted(run.decisions):
                print(f"  {(at_ms - first_ms) / 1000:8.2f}  {before} -> {after}  {reason}")
    print(header)
    print("-" * len(header))
    print("\n".join(lines))
    print("(latency as the client saw it: queueing, the gateway and the replica; the simulation's service "
          "time is the real run's p50 once its fleet had settled, its cold start the real one's)")


def _rows(label: str, run: RealRun, spec: AutoscalingSpec, burst_at: float, warm_count: int,
          simulate: bool) -> list[str]:
    sent = sorted(run.sent, key=lambda s: s.at)
    burst_sent = [s for s in sent if s.at >= burst_at - 1e-3]
    errors = sum(1 for s in sent if s.status != 200)
    latencies = np.array([s.latency_s for s in burst_sent])
    starts = sum(max(0, to - before) for _, before, to, _ in run.decisions)
    lines = [f"{'real, ' + label:<36} {len(sent):>9} {errors:>7} {starts:>15} {run.replica_seconds:>10.1f} "
             f"{np.percentile(latencies, 50) * 1000:>8.1f} {np.percentile(latencies, 99) * 1000:>9.1f}"]
    if not simulate:
        return lines
    lines[0] += f"   (cold start {run.cold_start_s:.2f} s)"
    # What one request took once the fleet had settled: the burst's second half.
    settled = latencies[len(latencies) // 2:]
    service_s = float(np.percentile(settled, 50))
    arrivals = np.array([s.at for s in sent])
    service = np.full(len(arrivals), service_s)
    for name, counts in (("simulated, zeroserve", True), ("simulated, previous (KPA)", False)):
        result = replay(arrivals, service, spec, duration_s=run.duration_s, cold_start_s=run.cold_start_s,
                        counts=counts)
        # The burst's requests only, as for the real run (the queue is FIFO: the first are the warm-up's).
        waits = np.array(result.waits[warm_count:]) + service_s
        lines.append(f"{name:<36} {len(sent):>9} {'-':>7} {result.starts:>15} "
                     f"{result.replica_seconds:>10.1f} {np.percentile(waits, 50) * 1000:>8.1f} "
                     f"{np.percentile(waits, 99) * 1000:>9.1f}")
    return lines


if __name__ == "__main__":
    main()
