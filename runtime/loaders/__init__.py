"""Loading a model directory: the loader is chosen by what the directory holds.

* ``MLmodel`` — an MLflow model: its ``onnx`` flavor is served by onnxruntime directly, its
  ``pytorch`` and ``tensorflow`` flavors (with a tensor signature) by torch and Keras, anything else
  through ``mlflow.pyfunc``;
* ``saved_model.pb`` — a TensorFlow SavedModel, through its ``serving_default`` signature;
* ``*.onnx`` — onnxruntime;
* ``*.pt2`` — a ``torch.export`` program;
* ``*.pt`` / ``*.pth`` / ``*.ts`` — TorchScript.

Each loader imports its library lazily, so serving an ONNX model never imports mlflow, pandas or torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.config import ReplicaSettings
from runtime.errors import ModelLoadError, ZeroserveError
from runtime.loaders._imports import quiet_import
from runtime.loaders.base import LoadedModel

if TYPE_CHECKING:
    from runtime.loaders._mlmodel import MLmodelInfo

__all__ = ["FLAVOR_MODULES", "LoadedModel", "detect", "load_model", "preload"]

# What ``preload`` imports for each flavor (the warm pool imports these before it forks).
FLAVOR_MODULES: dict[str, tuple[str, ...]] = {
    "onnx": ("onnxruntime",),
    "mlflow": ("pandas", "mlflow.pyfunc"),
    "sklearn": ("pandas", "sklearn", "mlflow.pyfunc", "mlflow.sklearn"),
    "torch": ("torch",),
    "tensorflow": ("tensorflow",),
}

_TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")


def preload(flavors: Iterable[str]) -> None:
    """Import the libraries that serving ``flavors`` needs, so that a later ``serve`` does not pay them."""
    for flavor in flavors:
        if flavor not in FLAVOR_MODULES:
            raise ValueError(f"unknown flavor {flavor!r}; known: {sorted(FLAVOR_MODULES)}")
        for module in FLAVOR_MODULES[flavor]:
            quiet_import(module)


def detect(path: Path) -> tuple[str, Path]:
    """The loader kind for ``path`` (a directory or a single model file) and the file it loads."""
    if path.is_file():
        return _kind_of_file(path), path
    if not path.is_dir():
        raise ModelLoadError(f"model path {str(path)!r} does not exist")
    if (path / "MLmodel").is_file():
        return "mlflow", path
    if (path / "saved_model.pb").is_file():
        return "tensorflow.saved_model", path
    candidates = sorted(child for child in path.iterdir() if child.is_file())
    for suffixes, kind in (
        ((".onnx",), "onnx"),
        ((".pt2",), "torch.export"),
        (_TORCHSCRIPT_SUFFIXES, "torchscript"),
    ):
        found = [child for child in candidates if child.suffix in suffixes]
        if len(found) > 1:
            preferred = [child for child in found if child.stem == "model"]
            if len(preferred) != 1:
                names = [child.name for child in found]
                raise ModelLoadError(
                    f"{path} holds several {kind} models {names}; name the one to serve model.*"
                )
            found = preferred
        if found:
            return kind, found[0]
    raise ModelLoadError(
        f"no model found in {str(path)!r}: expected an MLmodel file, a TensorFlow SavedModel "
        "(saved_model.pb), a .onnx file, a .pt2 program or a TorchScript .pt file"
    )


def _kind_of_file(path: Path) -> str:
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix == ".pt2":
        return "torch.export"
    if path.suffix in _TORCHSCRIPT_SUFFIXES:
        return "torchscript"
    raise ModelLoadError(f"cannot tell what kind of model {path.name!r} is (expected .onnx, .pt2 or .pt)")


def load_model(model_dir: str | os.PathLike[str], *, settings: ReplicaSettings | None = None) -> LoadedModel:
    """Load the model in ``model_dir``; any failure is a ``ModelLoadError`` that names the path."""
    settings = settings or ReplicaSettings()
    path = Path(model_dir)
    kind, target = detect(path)
    try:
        return _load(kind, target, settings)
    except ZeroserveError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the {kind} model at {str(path)!r}: {type(exc).__name__}: {exc}"
        ) from exc


def _load(kind: str, target: Path, settings: ReplicaSettings) -> LoadedModel:
    if kind == "onnx":
        from runtime.loaders.onnx import OnnxModel

        return OnnxModel(target, settings)
    if kind == "torchscript":
        from runtime.loaders.torch import load_torchscript

        return load_torchscript(target, settings)
    if kind == "torch.export":
        from runtime.loaders.torch import load_exported

        return load_exported(target, settings)
    if kind == "tensorflow.saved_model":
        from runtime.loaders.tensorflow import load_saved_model

        return load_saved_model(target, settings)
    return _load_mlflow(target, settings)


def _load_mlflow(directory: Path, settings: ReplicaSettings) -> LoadedModel:
    from runtime.loaders._mlmodel import read_mlmodel

    info = read_mlmodel(directory)
    flavors = info.flavors
    if "onnx" in flavors and flavors["onnx"].get("data"):
        from runtime.loaders.onnx import OnnxModel

        model = OnnxModel(directory / flavors["onnx"]["data"], settings)
        model.example = info.example
        return model
    # Convertible flavors are served from a verified ONNX conversion unless optimization is off.
    from runtime.optimize.loader import load_optimized

    optimized, optimization = load_optimized(directory, info, settings)
    if optimized is not None:
        return optimized
    native = _load_mlflow_native(directory, info, settings)
    native.optimization = optimization
    return native


def _load_mlflow_native(directory: Path, info: MLmodelInfo, settings: ReplicaSettings) -> LoadedModel:
    from runtime.types import TensorSchema

    flavors = info.flavors
    if "pytorch" in flavors and isinstance(info.input_schema, TensorSchema):
        from runtime.loaders.torch import load_mlflow_pytorch

        return load_mlflow_pytorch(directory, info, settings)
    if "tensorflow" in flavors and isinstance(info.input_schema, TensorSchema):
        from runtime.loaders.tensorflow import load_mlflow_tensorflow

        return load_mlflow_tensorflow(directory, info, settings)
    if "python_function" not in flavors:
        raise ModelLoadError(
            f"{directory}/MLmodel has no python_function flavor (flavors: {sorted(flavors)})"
        )
    from runtime.loaders.pyfunc import PyfuncModel

    return PyfuncModel(directory, info)
