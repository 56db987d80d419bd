"""The line a replica prints once its model is loaded, warm and served (``ZEROSERVE_REPLICA_READY
{"port": ..., "pid": ..., ...}``): what the local backend waits for and what the logs API cuts at. One
definition; this module imports nothing at run time, so whoever reads the line pays nothing for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.loaders.base import LoadedModel

READY_PREFIX = "ZEROSERVE_REPLICA_READY"


# The ready line is read as one line of at most a few KiB; a converter's error message can be long.
_MAX_REASON_CHARS = 1000


def optimization_status(model: LoadedModel, mode: str) -> dict[str, str]:
    """Which path serves ``model`` and why, as the ready line (and so the endpoint state) reports it."""
    result = model.optimization
    if result is not None:
        reason = result.reason if len(result.reason) <= _MAX_REASON_CHARS else (
            result.reason[: _MAX_REASON_CHARS - 3] + "...")
        return {"path": result.path, "mode": result.mode, "reason": reason}
    # Not an MLflow model that optimization looked at: its own flavor serves it.
    if model.flavor == "onnx":
        return {"path": "onnx", "mode": mode, "reason": "the model is an ONNX graph; nothing to convert"}
    return {
        "path": "native",
        "mode": mode,
        "reason": f"a {model.flavor} model is served by its own runtime; automatic optimization "
        "converts MLflow models only",
    }

