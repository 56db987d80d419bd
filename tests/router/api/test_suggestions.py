"""When a GPU would pay, the endpoint says so — and nothing changes until the user sets workload_type."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from autoscaler.backend import GpuCapacity
from router.api.suggestions import why_gpu
from tests.router.api.conftest import Harness

API = "/api/2.0/serving-endpoints"


def test_what_makes_a_model_worth_a_gpu(tmp_path: Path) -> None:
    (tmp_path / "resnet.pt").write_bytes(b"torchscript")
    assert why_gpu(str(tmp_path / "resnet.pt")) == "a PyTorch model"
    mlflow_torch = tmp_path / "mlflow-torch"
    mlflow_torch.mkdir()
    (mlflow_torch / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": {}, "pytorch": {}}}))
    assert why_gpu(mlflow_torch.as_uri()) == "a PyTorch model"
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    assert why_gpu(str(saved)) == "a TensorFlow SavedModel"
    small = tmp_path / "logreg"
    small.mkdir()
    (small / "model.onnx").write_bytes(b"x" * 1000)
    assert why_gpu(str(small)) is None  # a small graph: the CPU serves it well
    big = tmp_path / "big.onnx"
    with open(big, "wb") as file:  # sparse: 600 MiB on paper, nothing on disk
        file.truncate(600 * 2**20)
    assert why_gpu(str(big)) == "600 MiB of model"
    assert why_gpu("s3://models/resnet") is None  # not fetched just to decide
    os.remove(big)


async def test_the_endpoint_suggests_a_gpu_and_changes_nothing(harness: Harness, tmp_path: Path) -> None:
    (tmp_path / "resnet.pt").write_bytes(b"torchscript")

    async def one_gpu() -> GpuCapacity:
        return GpuCapacity(1, "this machine (GPU 0 stand-in)")

    harness.gateway.controller.gpu_capacity = one_gpu
    entity = {"name": "vision", "entity_name": (tmp_path / "resnet.pt").as_uri()}
    created = await harness.client.post(API, json={"name": "vision", "config": {"served_entities": [entity]}})
    assert created.status_code == 200, created.text
    [suggestion] = created.json()["suggestions"]
    assert suggestion.startswith("served entity 'vision' is a PyTorch model and this machine (GPU 0 "
                                 "stand-in) has 1 GPU(s): set its workload_type to GPU_SMALL")
    shown = (await harness.client.get(f"{API}/vision")).json()
    assert shown["suggestions"] == [suggestion]
    config = shown.get("config") or shown["pending_config"]
    assert config["served_entities"][0].get("workload_type", "CPU") == "CPU"  # not changed for them
    await harness.settle("vision")
    accepted = await harness.client.put(f"{API}/vision/config",
                                        json={"served_entities": [{**entity, "workload_type": "GPU_SMALL"}]})
    assert accepted.status_code == 200 and "suggestions" not in accepted.json()
