"""When a GPU would pay: a served entity on the CPU whose model is a deep-learning one (PyTorch,
TensorFlow/Keras) or large, on a backend that has GPUs. The create/update response and the endpoint's
view say so; the user accepts by setting ``workload_type`` — the device is never changed silently.

Only models on this machine's disk are looked at (a ``file://`` URI or a path); a model in a store is
not fetched to decide.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from autoscaler.backend import GpuCapacity
from router.api.models import EndpointConfig

LARGE_BYTES = 500 * 2**20
_DEEP_FLAVORS = {"pytorch": "a PyTorch model", "tensorflow": "a TensorFlow model", "keras": "a Keras model"}
_DEEP_SUFFIXES = {".pt2": "a PyTorch program", ".pt": "a PyTorch model", ".pth": "a PyTorch model"}


def why_gpu(model_uri: str) -> str | None:
    """What makes the model at ``model_uri`` worth a GPU, or None (or when it is not on this disk)."""
    if "://" in model_uri and not model_uri.startswith("file://"):
        return None
    path = Path(model_uri.removeprefix("file://"))
    try:
        if path.is_file():
            kind = _DEEP_SUFFIXES.get(path.suffix)
            size = path.stat().st_size
        elif path.is_dir():
            kind = _kind_of_directory(path)
            size = sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())
        else:
            return None
    except OSError:
        return None
    if kind is not None:
        return kind
    return f"{size / 2**20:,.0f} MiB of model" if size > LARGE_BYTES else None


def _kind_of_directory(path: Path) -> str | None:
    if (path / "saved_model.pb").is_file():
        return "a TensorFlow SavedModel"
    if (path / "MLmodel").is_file():
        try:
            flavors = (yaml.safe_load((path / "MLmodel").read_text()) or {}).get("flavors") or {}
        except (OSError, yaml.YAMLError):
            return None
        return next((kind for flavor, kind in _DEEP_FLAVORS.items() if flavor in flavors), None)
    return next((kind for name in sorted(os.listdir(path))
                 if (kind := _DEEP_SUFFIXES.get(Path(name).suffix)) is not None), None)


def gpu_suggestions(config: EndpointConfig, capacity: GpuCapacity) -> list[str]:
    if not capacity.gpus:
        return []
    suggestions = []
    for entity in config.served_entities:
        if entity.workload_type != "CPU":
            continue
        reason = why_gpu(entity.model_uri)
        if reason is not None:
            suggestions.append(
                f"served entity {entity.name!r} is {reason} and {capacity.where} has {capacity.gpus} GPU(s): "
                "set its workload_type to GPU_SMALL (or GPU_MEDIUM, GPU_LARGE) to serve it there; it stays "
                "on the CPU until you do")
    return suggestions
