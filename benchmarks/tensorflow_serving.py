"""The same Keras model (MLflow's tensorflow flavor, made here) served three ways in one run: zeroserve
natively (Keras called directly), zeroserve optimized (its verified tf2onnx conversion on onnxruntime),
and ``mlflow models serve``. Each is measured like ``benchmarks.runtime_throughput``'s rows (one-row
requests at c=1 and c=16, then 1,000-row requests), from the same load generator.

    python -m benchmarks.tensorflow_serving [--quick]

Needs the tensorflow extra (``pip install 'zeroserve[tensorflow]'``); a server that fails to start is a
row that says why.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from benchmarks.runtime_throughput import Target, measure

FEATURES = 32
NATIVE = "zeroserve keras (native)"
OPTIMIZED = "zeroserve keras (auto: served as ONNX)"
MLFLOW = "mlflow models serve (keras)"


def make_model(root: Path) -> tuple[Path, np.ndarray]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import mlflow
    from mlflow.models import infer_signature

    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,), name="features")
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    hidden = keras.layers.Dense(32, activation="relu")(hidden)
    network = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    rows = np.random.default_rng(0).standard_normal((1000, FEATURES)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.tensorflow.save_model(network, str(root / "keras"),
                                     signature=infer_signature(rows, network.predict(rows, verbose=0)),
                                     input_example=rows[:4])
    return root / "keras", rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short phases")
    args = parser.parse_args(argv)
    duration = 1.5 if args.quick else 5.0
    with tempfile.TemporaryDirectory(prefix="zeroserve-tf-") as tmp:
        workdir = Path(tmp)
        model, rows = make_model(workdir)
        one, thousand = json.dumps({"inputs": rows[:1].tolist()}).encode(), json.dumps(
            {"inputs": rows.tolist()}).encode()
        replica = [sys.executable, "-m", "runtime", "--port", "{port}", "--concurrency", "16",
                   "--model-uri", str(model)]
        ready = "/v2/health/ready"
        targets = [
            Target(NATIVE, [*replica, "--optimization", "off"], ready, one, thousand),
            Target(OPTIMIZED, [*replica, "--optimization", "required"], ready, one, thousand),
            Target(MLFLOW, [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model),
                            "--env-manager", "local", "-h", "127.0.0.1", "-p", "{port}"],
                   "/ping", one, thousand),
        ]
        for target in targets:
            print(f"... {target.name}", file=sys.stderr, flush=True)
            measure(target, duration, workdir)
    print(f"\nKeras MLP ({FEATURES} features -> 64 -> 32 -> 1), {'--quick' if args.quick else 'full'} run")
    print("| server | ready (s) | p50 c=1 (ms) | p50 c=16 (ms) | req/s c=16 | rows/s (1,000-row) |")
    print("|---|---:|---:|---:|---:|---:|")
    for target in targets:
        r = target.results
        if "c16" not in r:
            print(f"| {target.name} | {target.note} | | | | |")
            continue
        print(f"| {target.name} | {r['ready_s']:.2f} | {r['c1']['p50_ms']:.3f} | {r['c16']['p50_ms']:.3f} | "
              f"{r['c16']['rps']:,.0f} | {r['rows_per_s']:,.0f} |")
    results = {target.name: target.results for target in targets}
    for left in (NATIVE, OPTIMIZED):
        mine, theirs = results[left], results[MLFLOW]
        if "c16" in mine and "c16" in theirs:
            print(f"- {left} / mlflow models serve: {mine['c16']['rps'] / theirs['c16']['rps']:.2f}x req/s "
                  f"at c=16, {mine['rows_per_s'] / theirs['rows_per_s']:.2f}x rows/s")


if __name__ == "__main__":
    main()
