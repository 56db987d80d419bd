"""Which accelerators this machine has, and how a replica runs its model on the one it was given.

Detection asks the driver, not a framework: ``nvidia-smi`` (name and memory of each CUDA device), else
the driver's ``/proc/driver/nvidia/gpus`` (names only), restricted to ``CUDA_VISIBLE_DEVICES`` as CUDA
itself would be. onnxruntime is asked which execution providers its build has (a CPU-only wheel has no
CUDA one even on a GPU machine) and torch how many devices it sees, each only when already imported —
detection never pays a library's import (the gateway imports neither).

A replica placed on a GPU (``ZEROSERVE_DEVICE=cuda``, with the device in ``CUDA_VISIBLE_DEVICES``) builds
its onnxruntime sessions with TensorRT (where present) and CUDA ahead of the CPU, and moves torch
modules and inputs to ``cuda``; when the libraries here cannot use the GPU it refuses to start, saying
so, rather than serving on the CPU behind a GPU price.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from runtime.errors import ModelLoadError

Device = Literal["cpu", "cuda"]
NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int  # as CUDA numbers it on this machine (what CUDA_VISIBLE_DEVICES names)
    name: str
    memory_mib: int | None  # None where the driver's files do not say

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "memory_mib": self.memory_mib}


@dataclass(frozen=True, slots=True)
class Accelerators:
    gpus: tuple[Gpu, ...]
    onnxruntime_providers: tuple[str, ...]
    torch_cuda_devices: int | None  # None: torch was not imported, so not asked
    source: str  # where the GPUs were found: "nvidia-smi", the /proc folder, or "none"

    @property
    def cuda(self) -> bool:
        return bool(self.gpus)

    def to_dict(self) -> dict[str, Any]:
        return {"gpus": [gpu.to_dict() for gpu in self.gpus],
                "onnxruntime_providers": list(self.onnxruntime_providers),
                "torch_cuda_devices": self.torch_cuda_devices, "source": self.source}

    def describe(self) -> str:
        if not self.gpus:
            return "no CUDA device"
        return ", ".join(f"GPU {gpu.index} {gpu.name}"
                         + (f" ({gpu.memory_mib:,} MiB)" if gpu.memory_mib else "") for gpu in self.gpus)


Runner = Callable[[list[str]], str]


def _nvidia_smi(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout


def detect(
    *,
    environ: Mapping[str, str] | None = None,
    nvidia_smi: Runner | None = _nvidia_smi,
    proc: Path = NVIDIA_PROC,
) -> Accelerators:
    """The machine's CUDA devices (those CUDA_VISIBLE_DEVICES lets this process see) and what the
    libraries here can do with them. ``nvidia_smi=None`` skips the tool (tests pass a fake one)."""
    environ = os.environ if environ is None else environ
    gpus, source = _from_nvidia_smi(nvidia_smi), "nvidia-smi"
    if gpus is None:
        gpus, source = _from_proc(proc), str(proc)
    if not gpus:
        source = "none"
    gpus = _visible(gpus, environ.get("CUDA_VISIBLE_DEVICES"))
    return Accelerators(tuple(gpus), _onnxruntime_providers(), _torch_cuda_devices(), source)


def _from_nvidia_smi(run: Runner | None) -> list[Gpu] | None:
    if run is None or (run is _nvidia_smi and shutil.which("nvidia-smi") is None):
        return None
    try:
        out = run(["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"])
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in out.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit():
            memory = int(float(parts[2])) if parts[2].replace(".", "", 1).isdigit() else None
            gpus.append(Gpu(int(parts[0]), parts[1], memory))
    return gpus


def _from_proc(proc: Path) -> list[Gpu]:
    try:
        folders = sorted(entry for entry in proc.iterdir() if (entry / "information").is_file())
    except OSError:
        return []
    gpus = []
    for index, folder in enumerate(folders):
        fields = dict(line.split(":", 1) for line in (folder / "information").read_text().splitlines()
                      if ":" in line)
        gpus.append(Gpu(index, fields.get("Model", "NVIDIA GPU").strip(), None))
    return gpus


def _visible(gpus: list[Gpu], visible: str | None) -> list[Gpu]:
    if visible is None:
        return gpus
    wanted = [item.strip() for item in visible.split(",") if item.strip()]
    if not wanted or wanted[0] == "-1":
        return []
    if all(item.isdigit() for item in wanted):
        by_index = {gpu.index: gpu for gpu in gpus}
        return [by_index[int(item)] for item in wanted if int(item) in by_index]
    return gpus[: len(wanted)]  # UUIDs or MIG names: as many devices as named


def _onnxruntime_providers(*, load: bool = False) -> tuple[str, ...]:
    """What this onnxruntime build can run on; asked only of an onnxruntime already loaded unless
    ``load`` (detection in the gateway must not load it: +19 MiB resident, measured, for a list)."""
    module: Any = sys.modules.get("onnxruntime")
    if module is None and load:
        try:
            module = importlib.import_module("onnxruntime")
        except ImportError:
            return ()
    return tuple(module.get_available_providers()) if module is not None else ()


def _torch_cuda_devices() -> int | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return int(torch.cuda.device_count())
    except RuntimeError:  # a driver torch cannot talk to: no device it can use
        return 0


def onnx_providers(device: Device) -> list[str]:
    """onnxruntime execution providers for a replica on ``device``, fastest first."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    available = set(_onnxruntime_providers(load=True))
    if "CUDAExecutionProvider" not in available:
        raise ModelLoadError(
            "this replica was placed on a GPU, but onnxruntime here has no CUDA execution provider "
            f"(it has {', '.join(sorted(available)) or 'none'}): install onnxruntime-gpu in the replica's "
            "environment, or serve the endpoint with workload_type CPU")
    preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    return [provider for provider in preferred if provider in available] + ["CPUExecutionProvider"]


def torch_device(device: Device) -> Any:
    """The ``torch.device`` a replica on ``device`` runs its module on (torch is imported by then)."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            "this replica was placed on a GPU, but torch here sees no CUDA device (is it the CPU build? "
            f"torch {torch.__version__}): install a CUDA build of torch, or use workload_type CPU")
    return torch.device(device)
