"""Serving on CPU and GPU side by side: a small CNN as a torch.export program and as ONNX, each loaded by
the replica's own loaders (``runtime.loaders``) on every device this machine has, and called as the
replica calls it at batch sizes 1 and 64.

    python -m benchmarks.gpu_serving [--quick]

A device that cannot be used is a row that says why (here: no CUDA device; elsewhere, a CPU-only
onnxruntime or torch build). Rows/s and the median latency of one call, per model, device and batch size.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.config import ReplicaSettings
from runtime.devices import Device, detect
from runtime.errors import ZeroserveError
from runtime.loaders import load_model

BATCHES = (1, 64)


def make_models(root: Path) -> dict[str, Path]:
    """The same small CNN (3x32x32 images, 10 classes) as a torch.export program and as ONNX."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 10),
    ).eval()
    example = (torch.randn(2, 3, 32, 32),)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(network, example, dynamic_shapes=({0: batch},))
    exported = root / "cnn.pt2"
    torch.export.save(program, str(exported))
    onnx_dir = root / "cnn-onnx"
    onnx_dir.mkdir()
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter reports each of its steps
        torch.onnx.export(network, example, str(onnx_dir / "model.onnx"), input_names=["images"],
                          output_names=["logits"], dynamic_shapes=({0: batch},), dynamo=True)
    return {"torch.export": exported, "onnx": onnx_dir / "model.onnx"}


def measure(path: Path, device: Device, calls: int) -> dict[int, tuple[float, float]] | str:
    """{batch size: (rows/s, p50 ms)}, or why the device could not be used."""
    try:
        model = load_model(path, settings=ReplicaSettings(device=device, torch_threads=1))
    except ZeroserveError as exc:
        return exc.message
    name = model.input_schema.inputs[0].name  # type: ignore[union-attr]
    results = {}
    for batch in BATCHES:
        images = np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)
        for _ in range(5):
            model.predict({name: images})
        timings = []
        for _ in range(calls):
            started = time.perf_counter()
            model.predict({name: images})
            timings.append(time.perf_counter() - started)
        results[batch] = (batch * len(timings) / sum(timings), statistics.median(timings) * 1000)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="50 calls per row instead of 500")
    args = parser.parse_args(argv)
    calls = 50 if args.quick else 500
    import onnxruntime  # noqa: F401 - loaded first, so that detection reports its providers

    accelerators = detect()
    print(f"accelerators: {accelerators.describe()}; onnxruntime providers: "
          f"{', '.join(accelerators.onnxruntime_providers)}")
    rows: list[tuple[str, str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="zeroserve-gpu-") as root:
        models = make_models(Path(root))
        for kind, path in models.items():
            devices: tuple[Device, ...] = ("cpu", "cuda")
            for device in devices:
                if device == "cuda" and not accelerators.cuda:
                    rows.append((kind, device, "not measured: this machine has no CUDA device"))
                    continue
                rows.append((kind, device, measure(path, device, calls)))
    print(f"\n{'model':<14} {'device':<6} " + " ".join(f"{f'rows/s b={b}':>12} {f'p50 ms b={b}':>11}"
                                                       for b in BATCHES) + "   vs cpu (b=64)")
    cpu_rate = {kind: result[64][0] for kind, on, result in rows if on == "cpu" and isinstance(result, dict)}
    for kind, on, result in rows:
        if isinstance(result, str):
            print(f"{kind:<14} {on:<6} {result}")
            continue
        cells = " ".join(f"{result[b][0]:>12,.0f} {result[b][1]:>11.3f}" for b in BATCHES)
        ratio = result[64][0] / cpu_rate[kind] if kind in cpu_rate else float("nan")
        print(f"{kind:<14} {on:<6} {cells}   {ratio:.2f}x")


if __name__ == "__main__":
    main()
