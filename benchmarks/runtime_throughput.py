"""Replica throughput and latency: zeroserve vs its peers vs a bare Starlette+onnxruntime app.

One run, one machine, the same model — LogisticRegression on 20 features, as an MLflow sklearn model and
as ONNX — through:

* ``floor``: a bare Starlette + onnxruntime app written below (the least any Python server can do);
* zeroserve's replica (``python -m runtime``) on the ONNX and the sklearn model, batching on and off;
* the peers, on the sklearn model: ``mlflow models serve --env-manager local``; MLServer with
  mlserver-sklearn (V2 ``/v2/models/sklearn-model/infer``, one FP64 tensor); KServe's Python model
  server with a ``kserve.Model`` written for it (``benchmarks/_kserve_peer.py``, V1
  ``/v1/models/sklearn-model:predict``); BentoML with a ``@bentoml.service`` written for it
  (``benchmarks/_bentoml_peer.py``, ``POST /predict``).
  MLServer, KServe and BentoML run from virtualenvs of their own, made on first use
  (``benchmarks._peers``); ``--no-peers`` leaves all four out.

Every request carries the same rows in its server's protocol. For each server it measures start-to-ready
(process start to the first successful health check), p50/p99 latency at concurrency 1 and 16,
requests/s at 16, and rows/s for a 1,000-row request (whose answer is checked against the estimator's
labels where the server returns labels); then prints a table with ratios, the ONNX replica's against the
best peer measured. The load generator runs in its own process (``benchmarks._loadgen``).

    python3 -m benchmarks.runtime_throughput [--quick] [--duration S] [--only NAME ...] [--no-peers]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks import _peers

N_FEATURES = 20


@dataclass
class Target:
    name: str
    command: list[str]
    health: str
    body: bytes  # one row
    big_body: bytes  # 1,000 rows
    path: str = "/invocations"
    env: dict[str, str] = field(default_factory=dict)  # "{port}", "{grpc_port}", "{metrics_port}" filled in
    cwd: Path | None = None
    # Reads the labels out of an answer to big_body; measure() checks them against the estimator's.
    labels_of: Callable[[Any], list[int]] | None = None
    expected_labels: list[int] | None = None
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


def load(
    port: int, path: str, body: bytes, concurrency: int, duration: float, workdir: Path
) -> dict[str, Any]:
    body_file = workdir / f"body-{len(body)}.json"
    body_file.write_bytes(body)
    output = subprocess.run(
        [
            sys.executable, "-m", "benchmarks._loadgen", "--port", str(port), "--body-file", str(body_file),
            "--path", path, "--concurrency", str(concurrency), "--duration", str(duration),
            "--warmup", str(min(1.0, duration / 3)),
        ],
        capture_output=True, text=True, timeout=duration + 60,
    )  # fmt: skip
    if output.returncode != 0:
        raise RuntimeError(f"load generator failed at c={concurrency}: {output.stderr.strip()[-300:]}")
    result: dict[str, Any] = json.loads(output.stdout)
    return result


def measure(target: Target, duration: float, workdir: Path) -> None:
    if not target.command:  # a peer that could not be installed; its note says why
        return
    port = _peers.free_port()
    fill = _peers.port_filler(port)

    command = [fill(part) for part in target.command]
    env = {**_env(), **{key: fill(value) for key, value in target.env.items()}}
    started = time.perf_counter()
    log = (workdir / f"{target.name.split()[0]}-{port}.log").open("wb")  # a pipe nobody reads could fill up
    process = subprocess.Popen(
        command, stdout=log, stderr=log, start_new_session=True, env=env, cwd=target.cwd
    )
    try:
        wait_ready(process, f"http://127.0.0.1:{port}{target.health}", timeout=120)
        target.results["ready_s"] = time.perf_counter() - started
        check_labels(target, port)
        target.results["c1"] = load(port, target.path, target.body, 1, duration, workdir)
        target.results["c16"] = load(port, target.path, target.body, 16, duration, workdir)
        big = load(port, target.path, target.big_body, 1, duration / 2, workdir)
        target.results["rows_per_s"] = big["rps"] * 1000
        for key in ("c1", "c16"):
            bad = {code: n for code, n in target.results[key]["statuses"].items() if code != "200"}
            if bad:
                target.note = f"non-200 answers at {key}: {bad}"
    except Exception as exc:
        target.note = f"failed: {exc}"
    finally:
        # A peer that failed to start may be gone already (with its process group): the row says why,
        # and the run goes on to the next.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def check_labels(target: Target, port: int) -> None:
    """One 1,000-row request before the load: a server answering wrongly (or not at all) is not measured."""
    if target.labels_of is None or target.expected_labels is None:
        return
    url = f"http://127.0.0.1:{port}{target.path}"
    answer = httpx.post(
        url, content=target.big_body, headers={"Content-Type": "application/json"}, timeout=30
    )
    answer.raise_for_status()
    labels = target.labels_of(answer.json())
    wrong = sum(got != want for got, want in zip(labels, target.expected_labels, strict=True))
    if wrong:
        raise RuntimeError(f"{wrong} of {len(labels)} labels differ from the estimator's")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Peers launch their own tools by name (mlflow models serve starts `uvicorn`): this interpreter's
    # bin first, so that `python -m benchmarks.X` works without an activated virtualenv.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DO_NOT_TRACK", "true")
    return env


def build_targets(workdir: Path, peers: bool = True) -> list[Target]:
    from runtime.examples import feature_names, logreg_rows, make_logreg_mlflow_sklearn, make_logreg_onnx

    onnx_dir = make_logreg_onnx(workdir / "logreg-onnx", N_FEATURES)
    sklearn_dir = make_logreg_mlflow_sklearn(workdir / "logreg-sklearn", N_FEATURES)
    estimator_file = _peers.export_estimator(sklearn_dir, workdir / "logreg-joblib" / "model.joblib")
    one, thousand = logreg_rows(N_FEATURES, 1).tolist(), logreg_rows(N_FEATURES, 1000).tolist()
    labels = _peers.expected_labels(estimator_file, thousand)
    columns = feature_names(N_FEATURES)
    tensor_one, tensor_big = json.dumps({"inputs": one}).encode(), json.dumps({"inputs": thousand}).encode()
    split_one = json.dumps({"dataframe_split": {"columns": columns, "data": one}}).encode()
    split_big = json.dumps({"dataframe_split": {"columns": columns, "data": thousand}}).encode()
    replica = [sys.executable, "-m", "runtime", "--port", "{port}", "--concurrency", "16"]
    native = [*replica, "--optimization", "off"]  # the MLflow sklearn flavor itself, through mlflow.pyfunc
    floor = [sys.executable, "-m", "benchmarks.runtime_throughput", "--floor", str(onnx_dir / "model.onnx")]
    ready = "/v2/health/ready"

    # The label check is for servers running the scikit-learn estimator itself, which must match it
    # exactly; the ONNX targets compute in float32, which may flip a label on the decision boundary.
    def split(name: str, command: list[str], health: str = ready) -> Target:
        return Target(
            name, command, health, split_one, split_big, labels_of=_peers.v1_labels, expected_labels=labels
        )

    targets = [
        Target(FLOOR, [*floor, "--port", "{port}"], "/ping", tensor_one, tensor_big),
        Target(ONNX, [*replica, "--model-uri", str(onnx_dir)], ready, tensor_one, tensor_big),
        Target(
            ONNX_OFF, [*replica, "--no-batching", "--model-uri", str(onnx_dir)], ready, tensor_one, tensor_big
        ),
        split(SKLEARN, [*native, "--model-uri", str(sklearn_dir)]),
        split(SKLEARN_OFF, [*native, "--no-batching", "--model-uri", str(sklearn_dir)]),
        Target(SKLEARN_ONNX, [*replica, "--model-uri", str(sklearn_dir)], ready, split_one, split_big),
    ]
    if not peers:
        return targets
    mlflow_serve = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(sklearn_dir),
                    "--env-manager", "local", "-h", "127.0.0.1", "-p", "{port}"]  # fmt: skip
    targets.append(split(MLFLOW, mlflow_serve, "/ping"))
    for name, make in ((MLSERVER, _peers.mlserver), (KSERVE, _peers.kserve), (BENTOML, _peers.bentoml)):
        try:
            peer = make(workdir, estimator_file, one, thousand)
        except _peers.PeerUnavailable as exc:
            # Kept as a row that says why, so a run never silently compares against fewer peers.
            print(f"{name} left out: {exc}", file=sys.stderr, flush=True)
            targets.append(Target(name, [], "", b"", b"", note=f"skipped, no virtualenv: {exc}"))
            continue
        targets.append(
            Target(
                name, peer.command, peer.health, peer.body, peer.big_body, path=peer.path, env=peer.env,
                cwd=peer.cwd, labels_of=peer.labels_of, expected_labels=labels,
            )
        )  # fmt: skip
    return targets


FLOOR = "floor: Starlette+onnxruntime"
ONNX = "zeroserve onnx"
ONNX_OFF = "zeroserve onnx, no batching"
SKLEARN = "zeroserve sklearn (pyfunc)"
SKLEARN_OFF = "zeroserve sklearn (pyfunc), no batching"
SKLEARN_ONNX = "zeroserve sklearn (auto: served as ONNX)"
MLFLOW = "mlflow models serve (sklearn)"
MLSERVER = "MLServer + mlserver-sklearn (V2)"
KSERVE = "KServe Python server (V1)"
BENTOML = "BentoML (service, /predict)"
PEERS = (MLFLOW, MLSERVER, KSERVE, BENTOML)


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

    def ratio_of(left: str, right: str, key: str = "c16") -> float | None:
        a, b = results.get(left, {}), results.get(right, {})
        if key not in a or key not in b:
            return None
        if key == "c16":
            return float(a["c16"]["rps"] / b["c16"]["rps"])
        return float(b[key] / a[key]) if key == "ready_s" else float(a[key] / b[key])

    def ratio(left: str, right: str, key: str = "c16", goal: float | None = None) -> str:
        value = ratio_of(left, right, key)
        if value is None:
            return "n/a"
        shown = f"{value:.1f}x" if key == "ready_s" else f"{value:.2f}x"
        return (
            shown
            if goal is None
            else f"{shown} (target >= {goal:g}x: {'met' if value >= goal else 'MISSED'})"
        )

    def against_peers(left: str, key: str = "c16") -> str:
        return "; ".join(f"{_short(peer)} {ratio(left, peer, key)}" for peer in PEERS if peer in results)

    measured = [peer for peer in PEERS if "c16" in results.get(peer, {})]
    best = max(measured, key=lambda peer: results[peer]["c16"]["rps"]) if measured else None
    best_rows = max(measured, key=lambda peer: results[peer]["rows_per_s"]) if measured else None
    onnx = results.get(ONNX, {})
    p50 = f"{onnx['c1']['p50_ms']:.3f} ms" if "c1" in onnx else "n/a"
    ready = f"{onnx['ready_s']:.2f} s" if "ready_s" in onnx else "n/a"
    lines = [
        "",
        "Ratios (requests/s at c=16 unless noted):",
        f"- zeroserve onnx / best peer measured ({best or 'none'}): {ratio(ONNX, best or '', goal=5)}",
        f"- zeroserve onnx / bare floor: {ratio(ONNX, FLOOR, goal=0.7)}",
        f"- zeroserve onnx / each peer: {against_peers(ONNX)}",
        f"- zeroserve sklearn (pyfunc) / each peer: {against_peers(SKLEARN)}",
        f"- zeroserve sklearn (auto) / each peer: {against_peers(SKLEARN_ONNX)}",
        f"- batching on / off, sklearn pyfunc: {ratio(SKLEARN, SKLEARN_OFF, goal=1.5)}",
        f"- batching on / off, onnx: {ratio(ONNX, ONNX_OFF)}",
        f"- rows/s on 1,000-row requests, zeroserve onnx / floor: {ratio(ONNX, FLOOR, 'rows_per_s')}; "
        f"/ best peer ({best_rows or 'none'}): {ratio(ONNX, best_rows or '', 'rows_per_s')}",
        f"- zeroserve onnx p50 at c=1: {p50} (target <= 0.5 ms)",
        f"- start to ready, zeroserve onnx: {ready} (target <= 1 s); times faster than each peer: "
        f"{against_peers(ONNX, 'ready_s')}",
    ]
    return "\n".join(rows + notes + lines)


def _short(name: str) -> str:
    return name.split(" (")[0].split(" + ")[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short phases (about a minute in all)")
    parser.add_argument("--duration", type=float, help="seconds per load phase (default 5, --quick 1.5)")
    parser.add_argument("--only", nargs="*", help="run only targets whose name contains one of these")
    parser.add_argument(
        "--no-peers", action="store_true", help="leave out mlflow models serve, MLServer, KServe and BentoML"
    )
    parser.add_argument("--floor", metavar="MODEL_ONNX", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        run_floor(args.floor, args.port)
        return
    duration = args.duration or (1.5 if args.quick else 5.0)
    with tempfile.TemporaryDirectory(prefix="zeroserve-bench-") as tmp:
        workdir = Path(tmp)
        # --only that names no peer must not pay for making the peers' virtualenvs.
        peers = not args.no_peers and (
            not args.only or any(word in peer for word in args.only for peer in PEERS)
        )
        targets = build_targets(workdir, peers)
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
