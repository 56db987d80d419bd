"""When a GPU would pay: a served entity on the CPU whose model is a deep-learning one (PyTorch,
TensorFlow/Keras) or large, on a backend that has GPUs. The create/update response and the endpoint's
view say so; the user accepts by setting ``workload_type`` — the device is never changed silently.

Only models on this machine's disk are looked at (a ``file://`` URI or a path); a model in a store is
not fetched to decide.
"""

from __future__ import annotations

from pathlib import Path

from autoscaler.backend import GpuCapacity
from router.api.models import EndpointConfig

LARGE_BYTES = 500 * 2**20
_DEEP_FLAVORS = {"pytorch": "a PyTorch model", "tensorflow": "a TensorFlow model", "keras": "a Keras model"}
# What the replica's loaders would make of the model (runtime.loaders.detect), for the deep-learning kinds.
_DEEP_KINDS = {"tensorflow.saved_model": "a TensorFlow SavedModel", "torch.export": "a PyTorch program",
               "torchscript": "a PyTorch model"}


def why_gpu(model_uri: str) -> str | None:
    """What makes the model at ``model_uri`` worth a GPU, or None (or when it is not on this disk)."""
    if "://" in model_uri and not model_uri.startswith("file://"):
        return None
    from runtime.errors import ModelLoadError
    from runtime.loaders import detect
    from runtime.loaders._mlmodel import read_mlmodel

    path = Path(model_uri.removeprefix("file://"))
    try:
        kind, _ = detect(path)  # as a replica would see it
        if kind == "mlflow":
            flavors = read_mlmodel(path).flavors
            reason = next((why for flavor, why in _DEEP_FLAVORS.items() if flavor in flavors), None)
        else:
            reason = _DEEP_KINDS.get(kind)
        size = path.stat().st_size if path.is_file() else sum(
            entry.stat().st_size for entry in path.rglob("*") if entry.is_file())
    except (OSError, ModelLoadError):  # not a model a replica could load: nothing to suggest
        return None
    if reason is not None:
        return reason
    return f"{size / 2**20:,.0f} MiB of model" if size > LARGE_BYTES else None


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
