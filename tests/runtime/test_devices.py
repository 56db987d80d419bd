"""Accelerator detection and device placement, on a machine without a GPU.

What the driver reports is stood in for (a fake ``nvidia-smi`` answer, a fake ``/proc/driver/nvidia``
folder): no GPU exists here to ask. The libraries are the real ones — this machine's onnxruntime has no
CUDA execution provider and its torch is the CPU build, so a replica placed on a GPU must refuse to start
and say why.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.devices import Gpu, detect, onnx_providers, torch_device
from runtime.errors import ModelLoadError

SMI = "0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA H100 80GB HBM3, 81559\n2, Tesla T4, 15360\n"


def smi(answer: str) -> Callable[[list[str]], str]:
    return lambda argv: answer if argv[0] == "nvidia-smi" else ""


def test_nvidia_smi_names_each_device_with_its_memory() -> None:
    found = detect(environ={}, nvidia_smi=smi(SMI))
    assert found.gpus == (Gpu(0, "NVIDIA H100 80GB HBM3", 81559), Gpu(1, "NVIDIA H100 80GB HBM3", 81559),
                          Gpu(2, "Tesla T4", 15360))
    assert found.source == "nvidia-smi" and found.cuda
    assert "GPU 2 Tesla T4 (15,360 MiB)" in found.describe()


@pytest.mark.parametrize(("visible", "indices"), [
    ("1", [1]), ("2,0", [2, 0]), ("", []), ("-1", []), ("GPU-8d2f1c", [0]), ("7", []),
])
def test_cuda_visible_devices_restricts_what_is_seen(visible: str, indices: list[int]) -> None:
    found = detect(environ={"CUDA_VISIBLE_DEVICES": visible}, nvidia_smi=smi(SMI))
    assert [gpu.index for gpu in found.gpus] == indices


def test_without_nvidia_smi_the_drivers_proc_folder_names_the_devices(tmp_path: Path) -> None:
    for bus in ("0000:17:00.0", "0000:65:00.0"):
        (tmp_path / bus).mkdir()
        (tmp_path / bus / "information").write_text("Model: \t NVIDIA A10G\nIRQ: 16\n")
    found = detect(environ={}, nvidia_smi=None, proc=tmp_path)
    assert found.gpus == (Gpu(0, "NVIDIA A10G", None), Gpu(1, "NVIDIA A10G", None))


def test_this_machine_has_no_gpu_and_says_so(tmp_path: Path) -> None:
    import onnxruntime  # noqa: F401 - detection only asks a library already loaded

    found = detect(environ={}, nvidia_smi=None, proc=tmp_path / "absent")
    assert (found.gpus, found.source) == ((), "none")
    assert "CPUExecutionProvider" in found.onnxruntime_providers
    assert found.describe() == "no CUDA device" and not found.cuda
    assert found.to_dict()["gpus"] == []


def test_detection_loads_neither_onnxruntime_nor_torch() -> None:
    # The gateway detects at start: loading onnxruntime there cost 19 MiB of resident memory.
    script = ("import sys; from runtime.devices import detect; found = detect(); "
              "print('onnxruntime' in sys.modules, 'torch' in sys.modules, found.onnxruntime_providers)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.stdout.split() == ["False", "False", "()"], run.stderr


def test_a_cpu_replica_uses_the_cpu_provider_and_a_gpu_replica_without_cuda_refuses() -> None:
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ModelLoadError, match=r"no CUDA execution provider .* install onnxruntime-gpu"):
        onnx_providers("cuda")


def test_torch_on_a_gpu_with_the_cpu_build_refuses() -> None:
    pytest.importorskip("torch")
    assert str(torch_device("cpu")) == "cpu"
    with pytest.raises(ModelLoadError, match="torch here sees no CUDA device"):
        torch_device("cuda")
