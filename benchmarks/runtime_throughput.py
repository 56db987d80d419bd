"""Replica throughput and latency: zeroserve vs `mlflow models serve` vs a bare Starlette+onnxruntime app.

One run, one machine, the same model — LogisticRegression on 20 features, as an MLflow sklearn model and
as ONNX — through:

* ``floor``: a bare Starlette + onnxruntime app written below (the least any Python server can do);
* zeroserve's replica (``python -m runtime``) on the ONNX and the sklearn model, batching on and off;
* ``mlflow models serve --env-manager local`` on the sklearn model.

For each it measures start-to-ready (process start to the first successful health check), p50/p99
latency at concurrency 1 and 16, requests/s at 16, and rows/s for a 1,000-row request; then prints a
table with ratios. The load generator runs in its own process (``benchmarks._loadgen``).

    python3 -m benchmarks.runtime_throughput [--quick] [--duration S] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

N_FEATURES = 20


@dataclass
class Target:
    name: str
    command: list[str]
    health: str
    body: bytes  # one row
    big_body: bytes  # 1,000 rows
    note: str = ""
    results: dict[str, Any] = field(default_factory=dict)


# -- the bare floor app ----------------------------------------------------------------------------------


def run_floor(model: str, port: int) -> None:
    """Starlette + onnxruntime and nothing else: parse, run, serialize. Same session options as zeroserve,
    so the gap to zeroserve is the cost of its serving machinery, not of onnxruntime settings."""
    import numpy as np
    import onnxruntime as ort
    import orjson
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from runtime.config import ReplicaSettings
    from runtime.loaders.onnx import session_options

    session = ort.InferenceSession(
        model, sess_options=session_options(ReplicaSettings()), providers=["CPUExecutionProvider"]
    )
    input_name = session.get_inputs()[0].name

    async def invocations(request: Request) -> Response:
        features = np.asarray(orjson.loads(await request.body())["inputs"], dtype=np.float32)
        label, probabilities = session.run(None, {input_name: features})
        body = orjson.dumps(
            {"predictions": {"label": label, "probabilities": probabilities}},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        return Response(body, media_type="application/json")

    async def ping(request: Request) -> Response:
        return Response("\n")

    app = Starlette(routes=[Route("/invocations", invocations, methods=["POST"]), Route("/ping", ping)])
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="uvloop",
        access_log=False,
        log_level="warning",
    )


# -- orchestration -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(process: subprocess.Popen[bytes], url: str, timeout: float) -> float:
    started = time.perf_counter()
    with httpx.Client(timeout=1.0) as client:
        while time.perf_counter() - started < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"exited with {process.returncode} before it was ready")
            try:
                if client.get(url).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.005)
    raise RuntimeError(f"not ready after {timeout} s")


def load(port: int, body: bytes, concurrency: int, duration: float, workdir: Path) -> dict[str, Any]:
    body_file = workdir / f"body-{len(body)}.json"
    body_file.write_bytes(body)
    output = subprocess.run(
        [
            sys.executable, "-m", "benchmarks._loadgen", "--port", str(port), "--body-file", str(body_file),
            "--concurrency", str(concurrency), "--duration", str(duration),
            "--warmup", str(min(1.0, duration / 3)),
        ],
        capture_output=True, text=True, timeout=duration + 60, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(output.stdout)
    return result


def measure(target: Target, duration: float, workdir: Path) -> None:
    port = free_port()
    command = [part.replace("{port}", str(port)) for part in target.command]
    started = time.perf_counter()
    log = (workdir / f"{target.name.split()[0]}-{port}.log").open("wb")  # a pipe nobody reads could fill up
    process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True, env=_env())
    try:
        wait_ready(process, f"http://127.0.0.1:{port}{target.health}", timeout=120)
        target.results["ready_s"] = time.perf_counter() - started
        target.results["c1"] = load(port, target.body, 1, duration, workdir)
        target.results["c16"] = load(port, target.body, 16, duration, workdir)
        big = load(port, target.big_body, 1, duration / 2, workdir)
        target.results["rows_per_s"] = big["rps"] * 1000
        for key in ("c1", "c16"):
            bad = {code: n for code, n in target.results[key]["statuses"].items() if code != "200"}
            if bad:
                target.note = f"non-200 answers at {key}: {bad}"
    except Exception as exc:
        target.note = f"failed: {exc}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DO_NOT_TRACK", "true")
    return env


def build_targets(workdir: Path) -> list[Target]:
    from runtime.examples import feature_names, logreg_rows, make_logreg_mlflow_sklearn, make_logreg_onnx

    onnx_dir = make_logreg_onnx(workdir / "logreg-onnx", N_FEATURES)
    sklearn_dir = make_logreg_mlflow_sklearn(workdir / "logreg-sklearn", N_FEATURES)
    one, thousand = logreg_rows(N_FEATURES, 1).tolist(), logreg_rows(N_FEATURES, 1000).tolist()
    columns = feature_names(N_FEATURES)
    tensor_one, tensor_big = json.dumps({"inputs": one}).encode(), json.dumps({"inputs": thousand}).encode()
    split_one = json.dumps({"dataframe_split": {"columns": columns, "data": one}}).encode()
    split_big = json.dumps({"dataframe_split": {"columns": columns, "data": thousand}}).encode()
    replica = [sys.executable, "-m", "runtime", "--port", "{port}", "--concurrency", "16"]
    native = [*replica, "--optimization", "off"]  # the MLflow sklearn flavor itself, through mlflow.pyfunc
    floor_command = [
        sys.executable,
        "-m",
        "benchmarks.runtime_throughput",
        "--floor",
        str(onnx_dir / "model.onnx"),
    ]
    mlflow_serve = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        str(sklearn_dir),
        "--env-manager",
        "local",
    ]
    ready = "/v2/health/ready"
    return [
        Target(FLOOR, [*floor_command, "--port", "{port}"], "/ping", tensor_one, tensor_big),
        Target(ONNX, [*replica, "--model-uri", str(onnx_dir)], ready, tensor_one, tensor_big),
        Target(
            ONNX_OFF, [*replica, "--no-batching", "--model-uri", str(onnx_dir)], ready, tensor_one, tensor_big
        ),
        Target(SKLEARN, [*native, "--model-uri", str(sklearn_dir)], ready, split_one, split_big),
        Target(
            SKLEARN_OFF,
            [*native, "--no-batching", "--model-uri", str(sklearn_dir)],
            ready,
            split_one,
            split_big,
        ),
        Target(SKLEARN_ONNX, [*replica, "--model-uri", str(sklearn_dir)], ready, split_one, split_big),
        Target(MLFLOW, [*mlflow_serve, "-h", "127.0.0.1", "-p", "{port}"], "/ping", split_one, split_big),
    ]


FLOOR = "floor: Starlette+onnxruntime"
ONNX = "zeroserve onnx"
ONNX_OFF = "zeroserve onnx, no batching"
SKLEARN = "zeroserve sklearn (pyfunc)"
SKLEARN_OFF = "zeroserve sklearn (pyfunc), no batching"
SKLEARN_ONNX = "zeroserve sklearn (auto: served as ONNX)"
MLFLOW = "mlflow models serve (sklearn)"


def report(targets: list[Target]) -> str:
    results = {target.name: target.results for target in targets}
    rows = [
        "| server | ready (s) | p50 c=1 (ms) | p99 c=1 (ms) | p50 c=16 (ms) | p99 c=16 (ms) | req/s c=16 "
        "| rows/s (1,000-row) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target in targets:
        r = target.results
        if "c16" not in r:
            rows.append(f"| {target.name} | {target.note} |||||||")
            continue
        c1, c16 = r["c1"], r["c16"]
        rows.append(
            f"| {target.name} | {r['ready_s']:.2f} | {c1['p50_ms']:.3f} | {c1['p99_ms']:.3f} | "
            f"{c16['p50_ms']:.3f} | {c16['p99_ms']:.3f} | {c16['rps']:,.0f} | {r['rows_per_s']:,.0f} |"
        )
    notes = [
        f"- {target.name}: {target.note}" for target in targets if target.note and "c16" in target.results
    ]

    def ratio(left: str, right: str) -> str:
        a, b = results.get(left, {}), results.get(right, {})
        if "c16" not in a or "c16" not in b:
            return "n/a"
        return f"{a['c16']['rps'] / b['c16']['rps']:.2f}x"

    def rows_ratio(left: str, right: str) -> str:
        a, b = results.get(left, {}), results.get(right, {})
        return (
            f"{a['rows_per_s'] / b['rows_per_s']:.2f}x" if "rows_per_s" in a and "rows_per_s" in b else "n/a"
        )

    def ready_ratio(left: str, right: str) -> str:
        a, b = results.get(left, {}), results.get(right, {})
        return f"{b['ready_s'] / a['ready_s']:.1f}x" if "ready_s" in a and "ready_s" in b else "n/a"

    onnx = results.get(ONNX, {})
    p50 = f"{onnx['c1']['p50_ms']:.3f} ms" if "c1" in onnx else "n/a"
    ready = f"{onnx['ready_s']:.2f} s" if "ready_s" in onnx else "n/a"
    lines = [
        "",
        "Ratios (requests/s at c=16 unless noted):",
        f"- zeroserve onnx / bare floor: {ratio(ONNX, FLOOR)} (target >= 0.70x)",
        f"- zeroserve onnx / mlflow models serve: {ratio(ONNX, MLFLOW)} (target >= 5x the best peer)",
        f"- zeroserve sklearn (pyfunc) / mlflow models serve: {ratio(SKLEARN, MLFLOW)}",
        f"- zeroserve sklearn (auto) / mlflow models serve: {ratio(SKLEARN_ONNX, MLFLOW)}",
        f"- batching on / off, sklearn pyfunc: {ratio(SKLEARN, SKLEARN_OFF)} (target >= 1.5x)",
        f"- batching on / off, onnx: {ratio(ONNX, ONNX_OFF)}",
        f"- rows/s on 1,000-row requests, zeroserve onnx / floor: {rows_ratio(ONNX, FLOOR)}; "
        f"/ mlflow models serve: {rows_ratio(ONNX, MLFLOW)}",
        f"- zeroserve onnx p50 at c=1: {p50} (target <= 0.5 ms)",
        f"- start to ready, zeroserve onnx: {ready} (target <= 1 s); {ready_ratio(ONNX, MLFLOW)} faster than "
        "mlflow models serve",
    ]
    return "\n".join(rows + notes + lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short phases (about a minute in all)")
    parser.add_argument("--duration", type=float, help="seconds per load phase (default 5, --quick 1.5)")
    parser.add_argument("--only", nargs="*", help="run only targets whose name contains one of these")
    parser.add_argument("--floor", metavar="MODEL_ONNX", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        run_floor(args.floor, args.port)
        return
    duration = args.duration or (1.5 if args.quick else 5.0)
    with tempfile.TemporaryDirectory(prefix="zeroserve-bench-") as tmp:
        workdir = Path(tmp)
        targets = build_targets(workdir)
        if args.only:
            targets = [target for target in targets if any(word in target.name for word in args.only)]
        for target in targets:
            print(f"measuring {target.name} ...", file=sys.stderr, flush=True)
            measure(target, duration, workdir)
        print(f"\nruntime_throughput: {N_FEATURES}-feature LogisticRegression, {duration:g} s per phase, "
              f"{os.cpu_count()} CPUs\n")  # fmt: skip
        print(report(targets))


if __name__ == "__main__":
    main()
