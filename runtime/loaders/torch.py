"""PyTorch models: TorchScript, ``torch.export`` programs and MLflow's pytorch flavor.

TorchScript keeps argument names but not shapes or dtypes; a ``signature.json`` next to the model
(``{"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}``, the Open Inference Protocol's
metadata format) supplies them. ``torch.export`` programs carry both, dynamic dimensions included.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from runtime.config import ReplicaSettings
from runtime.devices import torch_device
from runtime.errors import InferenceError, InvalidInput, ModelLoadError
from runtime.loaders._imports import quiet_import
from runtime.loaders._mlmodel import MLmodelInfo
from runtime.loaders.base import LoadedModel, tensors_prediction
from runtime.types import V2_TO_NUMPY, Params, Prediction, Tensors, TensorSchema, TensorSpec

logger = logging.getLogger(__name__)

SIGNATURE_FILE = "signature.json"


class TorchModel(LoadedModel):
    def __init__(
        self,
        module: Any,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        *,
        flavor: str,
        description: str,
        settings: ReplicaSettings,
        example: dict[str, Any] | None = None,
    ) -> None:
        import torch

        torch.set_num_threads(settings.torch_threads)
        unsupported = [spec.name for spec in inputs if spec.dtype is not None and spec.dtype.kind == "O"]
        if unsupported:
            raise ModelLoadError(f"PyTorch models take numeric tensors; string inputs: {unsupported}")
        super().__init__(
            input_schema=TensorSchema(inputs), output_specs=outputs, example=example, description=description
        )
        self.flavor = flavor  # type: ignore[misc]  # one class serves three flavors
        self._torch = torch
        self._device = torch_device(settings.device)
        self._on_gpu = settings.device != "cpu"
        self._module = module.to(self._device) if self._on_gpu else module
        self._names = [spec.name for spec in inputs]

    def predict(self, inputs: Tensors, params: Params | None = None) -> Prediction:
        torch = self._torch
        arguments = []
        for name in self._names:
            array = inputs[name]
            if not array.flags.writeable or not array.flags.c_contiguous:
                array = np.array(array)  # torch shares memory and wants it writable
            tensor = torch.from_numpy(array)
            arguments.append(tensor.to(self._device, non_blocking=True) if self._on_gpu else tensor)
        try:
            with torch.inference_mode():
                result = self._module(*arguments)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            # Shape and dtype mismatches inside the graph surface as RuntimeError.
            raise InvalidInput(f"the model rejected the input: {str(exc).splitlines()[0]}") from exc
        except Exception as exc:
            raise InferenceError(f"PyTorch inference failed: {exc}") from exc
        return tensors_prediction(result, [spec.name for spec in self.output_specs], _numpy, (torch.Tensor,))


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _read_signature(directory: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]] | None:
    path = directory / SIGNATURE_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_bytes())
        return tuple(_v2_spec(item) for item in document["inputs"]), tuple(
            _v2_spec(item) for item in document.get("outputs", [])
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path} is not a valid signature: {exc}") from exc


def _v2_spec(item: dict[str, Any]) -> TensorSpec:
    datatype = item.get("datatype", "FP32")
    if datatype not in V2_TO_NUMPY:
        raise ValueError(f"unknown datatype {datatype!r}")
    shape = item.get("shape")
    return TensorSpec(str(item["name"]), V2_TO_NUMPY[datatype], tuple(shape) if shape is not None else None)


def load_torchscript(path: Path, settings: ReplicaSettings) -> TorchModel:
    import torch

    with warnings.catch_warnings():
        # torch deprecates TorchScript in favour of torch.export; serving existing TorchScript models
        # is the point here, so the deprecation is not the operator's problem at every start.
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    signature = _read_signature(path.parent)
    if signature is not None:
        inputs, outputs = signature
    else:
        # Argument names survive scripting; dtypes and shapes do not (float32, any shape).
        arguments = module.forward.schema.arguments[1:]
        inputs = tuple(TensorSpec(argument.name, np.dtype(np.float32), None) for argument in arguments)
        outputs = ()
    return TorchModel(module, inputs, outputs, flavor="torchscript", description=path.name, settings=settings)


def load_exported(path: Path, settings: ReplicaSettings) -> TorchModel:
    import torch
    from torch.export.graph_signature import InputKind

    program = torch.export.load(str(path))
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    inputs = []
    for spec in program.graph_signature.input_specs:
        if spec.kind != InputKind.USER_INPUT:
            continue
        value = placeholders[spec.arg.name].meta.get("val")
        if value is None:
            raise ModelLoadError(f"{path.name}: input {spec.arg.name!r} has no shape information")
        # Symbolic (dynamic) dimensions are any size.
        shape = tuple(int(dim) if isinstance(dim, int) else -1 for dim in value.shape)
        inputs.append(TensorSpec(spec.arg.name, _torch_dtype(value.dtype), shape))
    signature = _read_signature(path.parent)
    outputs = signature[1] if signature is not None else ()
    return TorchModel(
        program.module(),
        tuple(inputs),
        outputs,
        flavor="torch.export",
        description=path.name,
        settings=settings,
    )


def load_mlflow_pytorch(directory: Path, info: MLmodelInfo, settings: ReplicaSettings) -> TorchModel:
    pytorch_flavor = quiet_import("mlflow.pytorch")
    if not isinstance(info.input_schema, TensorSchema):
        raise ModelLoadError(
            f"{directory.name}: the pytorch flavor is served natively only with a tensor signature"
        )
    module = pytorch_flavor.load_model(str(directory), map_location="cpu")
    module.eval()
    return TorchModel(
        module,
        info.input_schema.inputs,
        info.output_specs,
        flavor="mlflow.pytorch",
        description=directory.name,
        settings=settings,
        example=info.example,
    )


def _torch_dtype(dtype: Any) -> np.dtype[Any]:
    import torch

    try:
        return np.dtype(torch.empty((), dtype=dtype).numpy().dtype)
    except TypeError as exc:  # bfloat16 and friends have no numpy dtype
        raise ModelLoadError(f"unsupported input dtype {dtype}") from exc
