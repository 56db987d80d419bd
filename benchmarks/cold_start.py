"""Cold start: from "scale 0 -> 1" to the first successful inference on the new replica.

The model is already in the local warm cache (a first, uncounted run fetches it), so what is measured
is process start (or warm-pool hand-over), model load, warm-up, readiness, and one request. Side by
side in one run, for a small ONNX model (LogisticRegression, 20 features) and the same model as an
MLflow sklearn model:

* ``warm pool``: zeroserve's autoscaler poked at zero, replica from a pre-imported pool worker
  (default settings: the sklearn model is served from its verified ONNX conversion);
* ``pool, pyfunc``: the sklearn model through ``mlflow.pyfunc`` (optimization off), with mlflow and
  sklearn preloaded in the pool;
* ``new process``: no pool (``python -m runtime`` started on demand);
* ``mlflow models serve``: process start to the first 200 from ``/invocations`` (sklearn only).

Each row is the p50 (and min/max) of ``--runs`` runs; targets: warm pool <= 150 ms for ONNX and
<= 400 ms for sklearn. (KServe's model server, not installed here, measures ~1.5 s process start.)

    python3 -m benchmarks.cold_start [--quick] [--runs N] [--skip-mlflow]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from autoscaler.backends.local import LocalBackend
from autoscaler.loop import Autoscaler
from autoscaler.spec import AutoscalingSpec, EntitySpec
from autoscaler.types import EntityKey, ReplicaInfo
from benchmarks import _peers
from runtime.examples import feature_names, logreg_rows, make_logreg_mlflow_sklearn, make_logreg_onnx

N_FEATURES = 20
TARGETS_MS = {"onnx": 150.0, "sklearn": 400.0}


@dataclass
class Row:
    model: str
    method: str
    times_ms: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def p50(self) -> float:
        return statistics.median(self.times_ms) if self.times_ms else float("nan")


class _ReadyWaiter:
    """A ``ReplicaListener`` that hands each ready replica to whoever waits for one."""

    def __init__(self) -> None:
        self.ready: asyncio.Queue[ReplicaInfo] = asyncio.Queue()

    def replica_ready(self, replica: ReplicaInfo) -> None:
        self.ready.put_nowait(replica)

    async def replica_draining(self, replica: ReplicaInfo) -> None:
        return None

    def replica_gone(self, replica: ReplicaInfo) -> None:
        return None

    def entity_failed(self, entity: EntityKey, reason: str) -> None:
        raise RuntimeError(f"{entity} failed: {reason}")


def request_for(model: str) -> tuple[str, bytes]:
    row = logreg_rows(N_FEATURES, 1)
    if model == "onnx":
        body = {"inputs": [{"name": "float_input", "shape": [1, N_FEATURES], "datatype": "FP32",
                            "data": row.astype("float32").ravel().tolist()}]}
        return "/v2/models/{name}/infer", orjson.dumps(body)
    body_split = {"dataframe_split": {"columns": feature_names(N_FEATURES), "data": row.tolist()}}
    return "/invocations", orjson.dumps(body_split)


@dataclass(frozen=True)
class Variant:
    method: str
    pool: bool
    preload: tuple[str, ...] = ("onnx",)  # the local backend's default
    replica_env: tuple[tuple[str, str], ...] = ()


VARIANTS = {
    "onnx": [Variant("zeroserve warm pool", True), Variant("zeroserve new process", False)],
    # By default an MLflow sklearn model is served from its verified ONNX conversion (made and cached
    # on the first, uncounted run); "pyfunc" turns that off and preloads mlflow + sklearn instead.
    "sklearn": [
        Variant("zeroserve warm pool", True),
        Variant("zeroserve pool, pyfunc", True, ("onnx", "sklearn"), (("ZEROSERVE_OPTIMIZATION", "off"),)),
        Variant("zeroserve new process", False),
    ],
}


async def zeroserve_runs(
    model: str, uri: str, runs: int, variant: Variant, environment: dict[str, str]
) -> Row:
    backend = LocalBackend(warm_pool_size=1 if variant.pool else 0, preload=variant.preload,
                           environment=environment)
    waiter = _ReadyWaiter()
    scaler = Autoscaler(backend, listener=waiter)
    row = Row(model, variant.method)
    pool = variant.pool
    name = f"{model}-cold"
    key = EntityKey("bench", name)
    path, body = request_for(model)
    spec = EntitySpec(uri, name, environment_vars=dict(variant.replica_env),
                      autoscaling=AutoscalingSpec(max_provisioned_concurrency=4))
    await scaler.start()
    try:
        async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
            for run in range(runs + 1):  # run 0 fills the cache (and any conversion): not counted
                if backend.pool is not None:
                    await backend.pool.wait_full(timeout_s=120)
                await asyncio.sleep(0.5)  # let the refill's CPU burst pass
                scaler.apply(key, spec)
                started = time.perf_counter()
                scaler.poke(key)
                replica = await asyncio.wait_for(waiter.ready.get(), timeout=120)
                response = await client.post(replica.url + path.format(name=name), content=body,
                                             headers={"content-type": "application/json"})
                elapsed_ms = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise RuntimeError(f"{row.method}: inference failed: {response.status_code} "
                                       f"{response.text}")
                if pool and not backend.started_from_pool(replica.replica_id):
                    row.note = "some runs missed the pool"
                if run > 0:
                    row.times_ms.append(elapsed_ms)
                await scaler.remove(key)
    finally:
        await scaler.stop()
    return row


def mlflow_serve_runs(model_dir: Path, runs: int, environment: dict[str, str]) -> Row:
    row = Row("sklearn", "mlflow models serve")
    _, body = request_for("sklearn")
    for _ in range(runs):
        port = _peers.free_port()
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_dir),
                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
        started = time.perf_counter()
        process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = started + 120
            with httpx.Client(timeout=5, trust_env=False) as client:
                while True:
                    if process.poll() is not None:
                        raise RuntimeError(f"mlflow models serve exited with {process.returncode}")
                    if time.perf_counter() > deadline:
                        raise RuntimeError("mlflow models serve did not answer within 120 s")
                    with contextlib.suppress(httpx.HTTPError):
                        response = client.post(f"http://127.0.0.1:{port}/invocations", content=body,
                                               headers={"content-type": "application/json"})
                        if response.status_code == 200:
                            break
                    time.sleep(0.02)
            row.times_ms.append((time.perf_counter() - started) * 1000)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return row


# A pre-imported parent that forks one child per request line: the alternative the warm pool was
# measured against (see autoscaler/backends/warm_pool.py).
_ZYGOTE = """
import json, os, sys
import runtime.__main__, runtime.server, runtime.store
from runtime.loaders import preload
preload(["onnx"])
sys.stdout.write("ZEROSERVE_POOL_IDLE\\n"); sys.stdout.flush()
for line in sys.stdin:
    if os.fork() == 0:
        os._exit(runtime.__main__.main(json.loads(line)))
"""


def _read_until(process: subprocess.Popen[bytes], prefix: bytes, timeout_s: float = 60) -> bytes:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"process ended before printing {prefix!r}")
        if line.startswith(prefix):
            return line
    raise RuntimeError(f"no {prefix!r} within {timeout_s} s")


def fork_vs_pool(onnx_dir: Path, runs: int, environment: dict[str, str]) -> list[Row]:
    """Hand-over to the ready line: idle pre-started worker (written one line) vs fork of a
    pre-imported parent. Both skip the imports; what differs is the process mechanics."""
    argv = ["--model-uri", onnx_dir.as_uri(), "--port", "0", "--name", "m"]
    pool_row, fork_row = Row("onnx", "hand-over: idle worker"), Row("onnx", "hand-over: fork")
    spawn_env = {**environment, "PYTHONUNBUFFERED": "1"}
    for _ in range(runs):
        worker = subprocess.Popen([sys.executable, "-m", "autoscaler.backends._worker", "--pool", "--preload",
                                   "onnx"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env=spawn_env)
        try:
            _read_until(worker, b"ZEROSERVE_POOL_IDLE")
            time.sleep(0.3)
            assert worker.stdin is not None
            started = time.perf_counter()
            worker.stdin.write(orjson.dumps({"argv": argv, "env": {}}) + b"\n")
            worker.stdin.flush()
            _read_until(worker, b"ZEROSERVE_REPLICA_READY")
            pool_row.times_ms.append((time.perf_counter() - started) * 1000)
        finally:
            worker.kill()
            worker.wait()
    zygote = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=spawn_env)
    try:
        _read_until(zygote, b"ZEROSERVE_POOL_IDLE")
        assert zygote.stdin is not None
        for _ in range(runs):
            time.sleep(0.3)
            started = time.perf_counter()
            zygote.stdin.write(orjson.dumps(argv) + b"\n")
            zygote.stdin.flush()
            line = _read_until(zygote, b"ZEROSERVE_REPLICA_READY")
            fork_row.times_ms.append((time.perf_counter() - started) * 1000)
            child = int(orjson.loads(line.split(b" ", 1)[1])["pid"])
            os.kill(child, signal.SIGKILL)
    finally:
        zygote.kill()
        zygote.wait()
    return [pool_row, fork_row]


def print_table(rows: list[Row]) -> None:
    header = f"{'model':<8} {'start path':<24} {'runs':>4} {'p50 ms':>9} {'min ms':>9} {'max ms':>9} " \
             f"{'x warm pool':>11} {'target':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        pool = next((r for r in rows if r.model == row.model and r.method == "zeroserve warm pool"), None)
        ratio = f"{row.p50 / pool.p50:.1f}x" if pool and pool.times_ms else "-"
        target = ""
        if row.method == "zeroserve warm pool":
            target = ("met" if row.p50 <= TARGETS_MS[row.model] else "missed") + f" {TARGETS_MS[row.model]:g}"
        if not row.times_ms:
            print(f"{row.model:<8} {row.method:<24} {0:>4}  {row.note}")
            continue
        print(f"{row.model:<8} {row.method:<24} {len(row.times_ms):>4} {row.p50:>9.0f} "
              f"{min(row.times_ms):>9.0f} {max(row.times_ms):>9.0f} {ratio:>11} {target:>8}"
              + (f"  ({row.note})" if row.note else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 runs per row (the minimum for a p50)")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--skip-mlflow", action="store_true", help="leave out mlflow models serve")
    args = parser.parse_args(argv)
    runs = 5 if args.quick else max(5, args.runs)

    with tempfile.TemporaryDirectory(prefix="zeroserve-cold-start-") as scratch:
        root = Path(scratch)
        onnx_dir = make_logreg_onnx(root / "logreg-onnx", N_FEATURES)
        sklearn_dir = make_logreg_mlflow_sklearn(root / "logreg-sklearn", N_FEATURES)
        # Peers launch their own tools by name (mlflow models serve starts `uvicorn`): this interpreter's
        # bin first, so that `python -m benchmarks.cold_start` works without an activated virtualenv.
        environment = {**os.environ, "ZEROSERVE_HOME": str(root / "home"),
                       "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
        rows: list[Row] = []
        for model, model_dir in (("onnx", onnx_dir), ("sklearn", sklearn_dir)):
            for variant in VARIANTS[model]:
                try:
                    row = asyncio.run(zeroserve_runs(model, model_dir.as_uri(), runs, variant, environment))
                except Exception as error:  # a row that says why; the rows measured so far are kept
                    row = Row(model, variant.method, note=f"failed: {error}")
                rows.append(row)
        if not args.skip_mlflow:
            try:
                rows.append(mlflow_serve_runs(sklearn_dir, runs, environment))
            except Exception as error:
                rows.append(Row("sklearn", "mlflow models serve", note=f"failed: {error}"))
        try:
            handover: list[Row] | str = fork_vs_pool(onnx_dir, runs, environment)
        except Exception as error:
            handover = f"failed: {error}"
    print(f"cold start, scale 0 -> 1 to the first successful inference (model cached), {runs} runs each")
    print_table(rows)
    if isinstance(handover, str):
        print(f"\nwarm pool design comparison {handover}")
        return
    print("\nwarm pool design: model hand-over to the replica's ready line (ONNX), p50 of "
          f"{runs}: idle pre-started worker {handover[0].p50:.0f} ms, fork of a pre-imported parent "
          f"{handover[1].p50:.0f} ms ({handover[1].p50 / handover[0].p50:.1f}x)")


if __name__ == "__main__":
    main()
