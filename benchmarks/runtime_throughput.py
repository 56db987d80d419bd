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
            {"predictions": {"label": label, "probabilities": probabilities}}, option=orjson.OPT_SERIALIZE_NUMPY
        )
        return Response(body, media_type="application/json")

    async def ping(request: Request) -> Response:
        return Response("\n")

    app = Starlette(routes=[Route("/invocations", invocations, methods=["POST"]), Route("/ping", ping)])
    uvicorn.run(
        app, host="127.0.0.1", port=port, http="httptools", loop="uvloop", access_log=False, log_level="warning"
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
            "--concurrency", str(concurrency), "--duration", str(duration), "--warmup", str(min(1.0, duration / 3)),
        ],
        capture_output=True, text=True, timeout=duration + 60, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(output.stdout)
    return result


def measure(target: Target, duration: float, workdir: Path) -> None:
    port = free_port()
    command = [part.replace("{port}", str(port)) for part in target.command]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, env=_env()
    )
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
    this = [sys.executable, "-m", "benchmarks.runtime_throughput", "--floor"]
    return [
        Target("floor (Starlette+ORT)", [*this, str(onnx_dir / "model.onnx"), "--port", "{port}"], "/ping",
               tensor_one, tensor_big),
        Target("zeroserve onnx", [*replica, "--model-uri", str(onnx_dir)], "/v2/health/ready", tensor_one, tensor_big),
        Target("zeroserve onnx, no batching", [*replica, "--no-batching", "--model-uri", str(onnx_dir)],
               "/v2/health/ready", tensor_one, tensor_big),
        Target("zeroserve sklearn", [*replica, "--model-uri", str(sklearn_dir)], "/v2/health/ready",
               split_one, split_big),
        Target("zeroserve sklearn, no batching", [*replica, "--no-batching", "--model-uri", str(sklearn_dir)],
               "/v2/health/ready", split_one, split_big),
        Target("mlflow models serve (sklearn)",
               [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(sklearn_dir), "--env-manager", "local",
                "-h", "127.0.0.1", "-p", "{port}"], "/ping", split_one, split_big),
    ]  # fmt: skip


def report(targets: list[Target]) -> str:
    def by_name(name: str) -> dict[str, Any]:
        return next((target.results for target in targets if target.name == name), {})

    rows = [
        "| server | ready (s) | p50 c=1 (ms) | p99 c=1 (ms) | p50 c=16 (ms) | p99 c=16 (ms) | req/s c=16 | rows/s (1,000-row) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target in targets:
        r = target.results
        if "c16" not in r:
            rows.append(f"| {target.name} | {target.note} |||||||")
            continue
        rows.append(
            f"| {target.name} | {r['ready_s']:.2f} | {r['c1']['p50_ms']:.3f} | {r['c1']['p99_ms']:.3f} | "
            f"{r['c16']['p50_ms']:.3f} | {r['c16']['p99_ms']:.3f} | {r['c16']['rps']:,.0f} | {r['rows_per_s']:,.0f} |"
        )
    notes = [f"- {target.name}: {target.note}" for target in targets if target.note and "c16" in target.results]

    def ratio(a: str, b: str, key: str = "rps") -> str:
        left, right = by_name(a), by_name(b)
        if "c16" not in left or "c16" not in right:
            return "n/a"
        return f"{left['c16'][key] / right['c16'][key]:.2f}x"

    def ready_ratio(a: str, b: str) -> str:
        left, right = by_name(a), by_name(b)
        return f"{right['ready_s'] / left['ready_s']:.1f}x faster" if left and right and "ready_s" in left and "ready_s" in right else "n/a"

    onnx, floor, mlflow = "zeroserve onnx", "floor (Starlette+ORT)", "mlflow models serve (sklearn)"
    zs_onnx = by_name(onnx)
    ratios = [
        "",
        "Ratios (req/s at c=16 unless noted):",
        f"- zeroserve onnx / bare floor: {ratio(onnx, floor)} (target >= 0.70x)",
        f"- zeroserve onnx / mlflow models serve: {ratio(onnx, mlflow)}",
        f"- zeroserve sklearn / mlflow models serve: {ratio('zeroserve sklearn', mlflow)}",
        f"- batching on / off, sklearn: {ratio('zeroserve sklearn', 'zeroserve sklearn, no batching')} (target >= 1.5x)",
        f"- batching on / off, onnx: {ratio(onnx, 'zeroserve onnx, no batching')}",
        f"- zeroserve onnx p50 at c=1: {zs_onnx['c1']['p50_ms']:.3f} ms (target <= 0.5 ms)" if "c1" in zs_onnx else "",
        f"- start to ready, zeroserve onnx vs mlflow models serve: {ready_ratio(onnx, mlflow)} "
        f"({zs_onnx.get('ready_s', float('nan')):.2f} s; target <= 1 s)",
    ]
    return "\n".join(rows + notes + ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
