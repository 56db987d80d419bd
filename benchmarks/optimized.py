"""Automatic optimization: a 200-tree random forest served optimized, natively, and by `mlflow models serve`.

One run, one machine, one model — a RandomForestClassifier (200 trees, 20 features) logged as an MLflow
sklearn model — through:

* zeroserve optimized: ``python -m runtime`` with ``--optimization auto`` (the default), which converts the
  forest to ONNX, verifies it against scikit-learn and serves the graph;
* zeroserve native: the same replica with ``--optimization off`` (scikit-learn through the pyfunc);
* ``mlflow models serve --env-manager local``;
* the native peers, on the same forest exported with joblib: MLServer + mlserver-sklearn (V2, one FP64
  tensor), KServe's Python model server (V1 ``instances``) and BentoML (a ``@bentoml.service`` calling
  ``predict``), each from a virtualenv of its own made on first use (``benchmarks._peers``);
  ``--no-peers`` leaves these three out.

For each it measures p50 latency at concurrency 1, requests/s at 16 and rows/s for a 1,000-row request,
and start-to-ready; zeroserve optimized starts twice, first with an empty conversion cache (it converts
and verifies) and then with the cached conversion. The load generator runs in its own process
(``benchmarks._loadgen``). Targets: optimized >= 50x mlflow serve and >= 20x native at c=16.

The two zeroserve replicas are measured at c=16 side by side: both run, and their load phases alternate
in rounds (optimized, native, optimized, ...), so that the machine's drift over a run (it is shared, and
a phase minutes later can be 20% slower) weighs on both alike instead of on whichever ran during it;
their req/s is over all rounds, and each round's ratio is printed too.

    python3 -m benchmarks.optimized [--quick] [--duration S] [--no-peers]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from benchmarks import _peers

N_FEATURES = 20
N_TREES = 200
TRAINING_ROWS = 4000
PAIRED_ROUNDS = 3
MLFLOW_FLAGS = ["--env-manager", "local", "-h", "127.0.0.1", "-p", "{port}"]
OPTIMIZED, NATIVE, MLFLOW = "zeroserve optimized", "zeroserve native", "mlflow models serve"
MLSERVER, KSERVE, BENTOML = "MLServer + mlserver-sklearn", "KServe Python server", "BentoML"


@dataclass
class Target:
    name: str
    command: list[str]
    health: str
    env: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    # A peer speaking another protocol brings its own path and bodies (one row, 1,000 rows).
    path: str = "/invocations"
    bodies: tuple[bytes, bytes] | None = None
    cwd: Path | None = None


def build_model(directory: Path) -> tuple[Path, list[list[float]]]:
    """The forest as an MLflow sklearn model, and 1,000 request rows."""
    import mlflow.sklearn
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    features, labels = make_classification(
        n_samples=TRAINING_ROWS, n_features=N_FEATURES, n_informative=10, random_state=0
    )
    columns = [f"f{index}" for index in range(N_FEATURES)]
    frame = pd.DataFrame(features, columns=columns)
    forest = RandomForestClassifier(n_estimators=N_TREES, random_state=0, n_jobs=2).fit(frame, labels)
    forest.n_jobs = None  # served one request at a time, like every peer's default
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(
            forest,
            str(directory),
            input_example=frame.head(3),
            pip_requirements=["scikit-learn", "mlflow"],
            serialization_format="cloudpickle",
        )
    rows: list[list[float]] = np.random.default_rng(1).standard_normal((1000, N_FEATURES)).tolist()
    return directory, rows


def split_bodies(rows: list[list[float]]) -> tuple[bytes, bytes]:
    """MLflow ``dataframe_split`` bodies of one and of all ``rows``."""
    columns = [f"f{index}" for index in range(N_FEATURES)]
    one = json.dumps({"dataframe_split": {"columns": columns, "data": rows[:1]}}).encode()
    thousand = json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()
    return one, thousand


def peer_targets(model_dir: Path, rows: list[list[float]], workdir: Path) -> dict[str, Target]:
    """MLServer, KServe and BentoML serving the forest natively (scikit-learn, exported with joblib); a peer
    whose virtualenv cannot be made stays in the table with the reason."""
    estimator_file = _peers.export_estimator(model_dir, workdir / "forest-joblib" / "model.joblib")
    targets = {}
    for name, make in ((MLSERVER, _peers.mlserver), (KSERVE, _peers.kserve), (BENTOML, _peers.bentoml)):
        try:
            peer = make(workdir, estimator_file, rows[:1], rows)
        except _peers.PeerUnavailable as exc:
            print(f"{name} left out: {exc}", file=sys.stderr, flush=True)
            targets[name] = Target(name, [], "", note=f"skipped, no virtualenv: {exc}")
            continue
        targets[name] = Target(
            name, peer.command, peer.health, peer.env, path=peer.path, bodies=(peer.body, peer.big_body),
            cwd=peer.cwd,
        )  # fmt: skip
    return targets


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    # stderr goes to a file, not a pipe: a server that logs while nobody reads (KServe writes a trace line
    # per request) would fill a pipe and stall mid-load.
    log: IO[bytes]
    ready_s: float  # start to the first successful health check


def start(target: Target, port: int) -> Running:
    """Start the server and wait until it is ready."""
    fill = _peers.port_filler(port)

    command = [fill(part) for part in target.command]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.update({key: fill(value) for key, value in target.env.items()})
    log = tempfile.TemporaryFile()  # noqa: SIM115 (stop() closes it)
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, env=env, cwd=target.cwd
    )
    running = Running(process, log, 0.0)
    url = f"http://127.0.0.1:{port}{target.health}"
    with httpx.Client(timeout=1.0) as client:
        while time.perf_counter() - started < 300:
            if process.poll() is not None:
                error = stop(running)[-1500:]
                raise RuntimeError(f"exited with {process.returncode} before it was ready: {error}")
            try:
                if client.get(url).status_code == 200:
                    running.ready_s = time.perf_counter() - started
                    return running
            except httpx.TransportError:
                pass
            time.sleep(0.01)
    stop(running)
    raise RuntimeError("not ready after 300 s")


def stop(running: Running) -> str:
    """SIGTERM the server's process group; returns what it wrote to stderr."""
    process = running.process
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()
    with running.log:
        running.log.seek(0)
        return running.log.read().decode(errors="replace")


def load(
    port: int, path: str, body: bytes, concurrency: int, duration: float, workdir: Path
) -> dict[str, Any]:
    body_file = workdir / f"body-{len(body)}.json"
    body_file.write_bytes(body)
    warmup = min(1.0, duration / 3)
    command = [
        sys.executable, "-m", "benchmarks._loadgen", "--port", str(port), "--body-file", str(body_file),
        "--path", path, "--concurrency", str(concurrency), "--duration", str(duration),
        "--warmup", str(warmup),
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, timeout=duration + 90)
    if output.returncode != 0:
        raise RuntimeError(f"load generator failed at c={concurrency}: {output.stderr.strip()[-300:]}")
    result: dict[str, Any] = json.loads(output.stdout)
    bad = {code: count for code, count in result["statuses"].items() if code != "200"}
    if bad:
        raise RuntimeError(f"non-200 answers at c={concurrency}: {bad}")
    return result


def measure(
    target: Target, one: bytes, thousand: bytes, duration: float, workdir: Path, *, c16: bool = True
) -> None:
    """Start ``target`` and measure it; without ``c16``, its c=16 phase is left to ``measure_paired``."""
    if not target.command:  # a peer that could not be installed; its note says why
        return
    port = _peers.free_port()
    running = start(target, port)
    target.results["ready_s"] = running.ready_s
    one, thousand = target.bodies or (one, thousand)
    try:
        target.results["c1"] = load(port, target.path, one, 1, duration, workdir)
        if c16:
            target.results["c16"] = load(port, target.path, one, 16, duration, workdir)
        big = load(port, target.path, thousand, 1, duration / 2, workdir)
        target.results["rows_per_s"] = big["rps"] * 1000
    finally:
        log = stop(running)
    # The replica logs which path it serves and why (logger zeroserve.optimize).
    decisions = [
        line.split("zeroserve.optimize: ", 1)[1]
        for line in log.splitlines()
        if "zeroserve.optimize: " in line
    ]
    # ... and whether model calls run inline on the event loop or on a worker thread (chosen at warm-up).
    execution = re.search(r"serving <Replica .*? (execution=\w+)", log)
    if decisions:
        target.note = decisions[-1][:240] + (f" [{execution.group(1)}]" if execution else "")


def measure_paired(
    first: Target, second: Target, body: bytes, duration: float, rounds: int, workdir: Path
) -> list[float]:
    """c=16 phases of ``first`` and ``second`` (both running) in alternating rounds of ``duration`` s;
    fills each one's ``c16`` result (req/s over all its rounds) and returns ``first / second`` per round."""
    ports = [_peers.free_port(), _peers.free_port()]
    running = []
    try:
        for target, port in zip((first, second), ports, strict=True):
            running.append(start(target, port))
        per_target: list[list[dict[str, Any]]] = [[], []]
        for _ in range(rounds):
            for index, (target, port) in enumerate(zip((first, second), ports, strict=True)):
                per_target[index].append(load(port, target.path, body, 16, duration, workdir))
    finally:
        for each in running:
            stop(each)
    for target, results in zip((first, second), per_target, strict=True):
        requests = sum(result["requests"] for result in results)
        # Each round lasts ``duration``; the pooled rate weighs them alike. The p50 shown is the median
        # of the rounds' p50s.
        target.results["c16"] = {
            "rps": requests / sum(result["requests"] / result["rps"] for result in results),
            "p50_ms": sorted(result["p50_ms"] for result in results)[len(results) // 2],
        }
    return [a["rps"] / b["rps"] for a, b in zip(per_target[0], per_target[1], strict=True)]


def cached_cold_start(target: Target) -> float:
    """Start-to-ready again, now that the conversion cache holds the verified graph."""
    running = start(target, _peers.free_port())
    stop(running)
    return running.ready_s


def report(
    targets: dict[str, Target], cached_ready_s: float | None, duration: float, paired: list[float]
) -> str:
    lines = [
        f"optimized: {N_TREES}-tree RandomForestClassifier, {N_FEATURES} features (MLflow sklearn model), "
        f"{duration:g} s per phase, {os.cpu_count()} CPUs",
        "",
        "| server | p50 c=1 (ms) | req/s c=16 | p50 c=16 (ms) | rows/s (1,000-row) | start to ready (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for target in targets.values():
        r = target.results
        if "c16" not in r:
            lines.append(f"| {target.name} | failed: {target.note} |||||")
            continue
        ready = f"{r['ready_s']:.2f}"
        if target.name == OPTIMIZED:
            ready += " (converting)"
            if cached_ready_s is not None:
                ready += f" / {cached_ready_s:.2f} (cached)"
        c1, c16 = r["c1"], r["c16"]
        lines.append(
            f"| {target.name} | {c1['p50_ms']:.2f} | {c16['rps']:,.0f} | {c16['p50_ms']:.2f} | "
            f"{r['rows_per_s']:,.0f} | {ready} |"
        )

    def ratio(a: str, b: str) -> float | None:
        left, right = targets[a].results.get("c16"), targets[b].results.get("c16")
        return left["rps"] / right["rps"] if left and right else None

    def shown(value: float | None, goal: float) -> str:
        return (
            "n/a"
            if value is None
            else f"{value:.1f}x (target >= {goal:g}x: {'met' if value >= goal else 'MISSED'})"
        )

    lines += [
        "",
        "req/s at c=16:",
        f"- optimized / mlflow models serve: {shown(ratio(OPTIMIZED, MLFLOW), 50)}",
        f"- optimized / zeroserve native: {shown(ratio(OPTIMIZED, NATIVE), 20)}"
        + (f" (alternating rounds: {', '.join(f'{value:.1f}x' for value in paired)})" if paired else ""),
        f"- zeroserve native / mlflow models serve: {shown(ratio(NATIVE, MLFLOW), 1)}",
    ]
    peers = [name for name in (MLFLOW, MLSERVER, KSERVE, BENTOML) if name in targets]
    measured = [name for name in peers if "c16" in targets[name].results]
    if measured:
        best = max(measured, key=lambda name: targets[name].results["c16"]["rps"])
        each = "; ".join(
            f"{name} {'n/a' if value is None else f'{value:.1f}x'}"
            for name in measured
            for value in [ratio(OPTIMIZED, name)]
        )
        lines += [
            f"- optimized / best peer measured ({best}): {ratio(OPTIMIZED, best) or 0:.1f}x",
            f"- optimized / each peer: {each}",
        ]
    notes = [
        f"- {target.name}: {target.note}"
        for target in targets.values()
        if target.note and target.name in (OPTIMIZED, NATIVE)
    ]
    return "\n".join(lines + (["", "Paths as the replicas logged them:", *notes] if notes else []))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short load phases (about two minutes in all)")
    parser.add_argument("--duration", type=float, help="seconds per load phase (default 5, --quick 1.5)")
    parser.add_argument("--no-peers", action="store_true", help="leave out MLServer, KServe and BentoML")
    args = parser.parse_args()
    duration = args.duration or (1.5 if args.quick else 5.0)
    with tempfile.TemporaryDirectory(prefix="zeroserve-bench-optimized-") as tmp:
        workdir = Path(tmp)
        print("training the forest ...", file=sys.stderr, flush=True)
        model_dir, rows = build_model(workdir / "forest")
        one, thousand = split_bodies(rows)
        replica = [sys.executable, "-m", "runtime", "--model-uri", str(model_dir), "--port", "{port}",
                   "--concurrency", "16", "--log-level", "INFO"]  # fmt: skip
        cache = {"ZEROSERVE_CACHE_DIR": str(workdir / "cache")}
        targets = {
            OPTIMIZED: Target(OPTIMIZED, [*replica, "--optimization", "auto"], "/v2/health/ready", cache),
            NATIVE: Target(NATIVE, [*replica, "--optimization", "off"], "/v2/health/ready", cache),
            MLFLOW: Target(
                MLFLOW,
                [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_dir), *MLFLOW_FLAGS],
                "/ping",
            ),
        }
        if not args.no_peers:
            targets.update(peer_targets(model_dir, rows, workdir))
        cached_ready_s = None
        for target in targets.values():
            print(f"measuring {target.name} ...", file=sys.stderr, flush=True)
            try:
                measure(target, one, thousand, duration, workdir, c16=target.name not in (OPTIMIZED, NATIVE))
            except Exception as exc:
                target.note = str(exc)[:300]
            if target.name == OPTIMIZED and "c1" in target.results:
                cached_ready_s = cached_cold_start(target)
        paired: list[float] = []
        optimized, native = targets[OPTIMIZED], targets[NATIVE]
        if "c1" in optimized.results and "c1" in native.results:
            print("measuring zeroserve optimized and native at c=16, alternating ...", file=sys.stderr)
            try:
                paired = measure_paired(optimized, native, one, duration, PAIRED_ROUNDS, workdir)
            except Exception as exc:
                optimized.note = native.note = f"c=16 phases failed: {str(exc)[:300]}"
        print()
        print(report(targets, cached_ready_s, duration, paired))


if __name__ == "__main__":
    main()
