"""The Kubernetes backend against a real control plane (``../shared/k8s``): pods are created through
the API server, scheduled by the real scheduler and run by fake-node as local processes (no image pull,
no container runtime)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autoscaler.backend import ReplicaHealth, ReplicaStartError
from autoscaler.backends.kubernetes import (
    KubernetesBackend,
    KubernetesBackendSettings,
    pod_name,
    start_problem,
    waiting_reason,
)
from autoscaler.spec import AutoscalingSpec, EntitySpec
from autoscaler.types import EntityKey
from runtime.examples import logreg_rows, make_logreg_onnx

KEY = EntityKey("fraud", "logreg")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_logreg_onnx(tmp_path_factory.mktemp("models") / "logreg", n_features=20)


def settings(kube: str, cache: Path, pool_size: int = 0) -> KubernetesBackendSettings:
    # fake-node runs the pod's command on this machine: this interpreter, not the image's.
    return KubernetesBackendSettings(kubeconfig=kube, python=sys.executable, cache_host_path=str(cache),
                                     pool_size=pool_size)


@pytest.fixture
async def backend(kube: str, tmp_path: Path) -> AsyncIterator[KubernetesBackend]:
    made = KubernetesBackend(settings(kube, tmp_path / "cache"))
    await made.open()
    try:
        yield made
    finally:
        await made.close()


async def pods(backend: KubernetesBackend) -> list[Any]:
    from lightkube.resources.core_v1 import Pod

    managed = {"app.kubernetes.io/managed-by": "zeroserve", "app.kubernetes.io/component": "replica"}
    return [pod async for pod in backend._client.list(Pod, labels=managed)
            if pod.metadata.deletionTimestamp is None]


def spec(model_dir: Path, **fields: Any) -> EntitySpec:
    return EntitySpec(model_uri=model_dir.as_uri(), served_name="logreg", start_timeout_s=60,
                      drain_timeout_s=2, autoscaling=AutoscalingSpec(container_concurrency=4), **fields)


def test_the_pod_says_what_it_runs(tmp_path: Path, model_dir: Path) -> None:
    backend = KubernetesBackend(KubernetesBackendSettings(image="registry.example/zeroserve-runtime:1",
                                                          gpu_node_selector={"gpu": "a100"}))
    manifest = backend.pod_manifest(KEY, spec(model_dir, workload_type="GPU_SMALL"), "fraud-logreg-7")
    assert manifest["metadata"]["name"] == "zs-fraud-logreg-7" == pod_name("fraud-logreg-7")
    assert manifest["metadata"]["labels"]["zeroserve.io/endpoint"] == "fraud"
    container = manifest["spec"]["containers"][0]
    assert container["image"] == "registry.example/zeroserve-runtime:1"
    args = container["args"]
    assert args[args.index("--host") + 1] == "$(POD_IP)" and args[args.index("--port") + 1] == "8080"
    assert args[args.index("--model-uri") + 1] == model_dir.as_uri()
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert manifest["spec"]["nodeSelector"] == {"gpu": "a100"}
    assert manifest["spec"]["terminationGracePeriodSeconds"] == 7
    assert manifest["spec"]["volumes"][0]["hostPath"]["path"] == "/var/cache/zeroserve"
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["ZEROSERVE_CACHE_DIR"] == "/var/cache/zeroserve"
    on_claim = KubernetesBackend(KubernetesBackendSettings(cache_pvc="models")).pod_manifest(
        KEY, spec(model_dir), "fraud-logreg-8")
    assert on_claim["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "models"}


@pytest.mark.slow
async def test_a_replica_is_a_pod(backend: KubernetesBackend, model_dir: Path) -> None:
    info = await backend.start_replica(KEY, spec(model_dir), "fraud-logreg-1")
    assert info.url.startswith("http://127.0.") and info.capacity == 4
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{info.url}/invocations", json={"inputs": logreg_rows(20, 2).tolist()})
    assert answer.status_code == 200, answer.text
    assert await backend.health("fraud-logreg-1") is ReplicaHealth.HEALTHY
    # A restarted gateway finds it (and adopts it) instead of starting another.
    other = KubernetesBackend(backend.settings)
    assert [r.replica_id for r in await other.discover()] == ["fraud-logreg-1"]
    assert (await other.discover())[0].entity == KEY
    await other.detach()
    await backend.stop_replica("fraud-logreg-1", 2)
    for _ in range(100):
        if not await pods(backend):
            break
        await asyncio.sleep(0.1)
    assert await pods(backend) == []
    assert await backend.health("fraud-logreg-1") is ReplicaHealth.EXITED


@pytest.mark.slow
async def test_scale_up_specializes_a_warm_pool_pod(kube: str, tmp_path: Path, model_dir: Path) -> None:
    from lightkube.resources.core_v1 import Pod

    backend = KubernetesBackend(settings(kube, tmp_path / "cache", pool_size=1))
    await backend.open()
    try:
        async def idle_pool() -> list[Any]:
            return [pod async for pod in backend._client.list(Pod, labels={"zeroserve.io/pool": "cpu"})
                    if pod.metadata.deletionTimestamp is None and pod.status.podIP
                    and await backend._idle(f"http://{pod.status.podIP}:8080")]

        for _ in range(300):  # the pool pod imports the runtime: a few seconds
            if await idle_pool():
                break
            await asyncio.sleep(0.1)
        (pool_pod,) = await idle_pool()
        info = await backend.start_replica(KEY, spec(model_dir), "fraud-logreg-3")
        assert backend.specialized == 1
        assert info.url == f"http://{pool_pod.status.podIP}:8080"  # the pool pod became the replica
        async with httpx.AsyncClient() as client:
            body = {"inputs": logreg_rows(20, 1).tolist()}
            answer = await client.post(f"{info.url}/invocations", json=body)
        assert answer.status_code == 200, answer.text
        claimed = await backend._client.get(Pod, pool_pod.metadata.name)
        assert "zeroserve.io/pool" not in (claimed.metadata.labels or {})
        assert claimed.metadata.labels["zeroserve.io/endpoint"] == "fraud"
        # The pool refills itself, and a restarted gateway finds the specialized pod as a replica.
        for _ in range(300):
            if await idle_pool():
                break
            await asyncio.sleep(0.1)
        assert len(await idle_pool()) == 1
        restarted = KubernetesBackend(backend.settings)
        assert [r.replica_id for r in await restarted.discover()] == ["fraud-logreg-3"]
        await restarted.detach()
        await backend.stop_replica("fraud-logreg-3", 1)
    finally:
        await backend.close()


@pytest.mark.slow
async def test_a_pod_that_cannot_start_says_why(backend: KubernetesBackend, tmp_path: Path) -> None:
    broken = EntitySpec(model_uri=(tmp_path / "missing").as_uri(), served_name="logreg", start_timeout_s=60)
    with pytest.raises(ReplicaStartError, match="cannot start: the container exited"):
        await backend.start_replica(KEY, broken, "fraud-logreg-2")
    for _ in range(100):
        if not await pods(backend):
            break
        await asyncio.sleep(0.1)
    assert await pods(backend) == []


def test_start_problems_in_kubernetes_words() -> None:
    from lightkube.resources.core_v1 import Pod

    def pod(status: dict[str, Any]) -> Any:
        return Pod.from_dict({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "status": status})

    assert start_problem(pod({"phase": "Pending"})) is None
    unschedulable = pod({"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/1 nodes: Insufficient nvidia.com/gpu"}]})
    # No node fits it now: that may pass (a node becomes ready, one is added); said on a start timeout.
    assert start_problem(unschedulable) is None
    assert waiting_reason(unschedulable) == "Unschedulable: 0/1 nodes: Insufficient nvidia.com/gpu"
    pulling = pod({"phase": "Pending", "containerStatuses": [{
        "name": "runtime", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]})
    assert start_problem(pulling) == "ImagePullBackOff: Back-off pulling image"
    oom = pod({"phase": "Running", "containerStatuses": [{
        "name": "runtime", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
        "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]})
    assert start_problem(oom) == "the container exited (OOMKilled, exit code 137) before it was ready"


RBAC = Path(__file__).resolve().parents[3] / "infra" / "kubernetes" / "base" / "rbac.yaml"


def token_kubeconfig(kube: str, token: str, target: Path) -> str:
    """``kube`` with its user replaced by a bearer token."""
    config = json.loads(Path(kube).read_text())
    config["users"] = [{"name": "zeroserve-gateway", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "zeroserve-gateway"
    target.write_text(json.dumps(config))
    return str(target)


@pytest.mark.slow
async def test_the_shipped_rbac_is_enough(kube: str, tmp_path: Path, model_dir: Path) -> None:
    # The Role of infra/kubernetes/base/rbac.yaml, in a namespace of its own, and nothing else: the backend
    # runs a replica under that service account's token.
    from lightkube import AsyncClient, KubeConfig, codecs
    from lightkube.models.authentication_v1 import TokenRequestSpec
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import Namespace, ServiceAccountToken

    admin = AsyncClient(config=KubeConfig.from_file(kube))
    namespace = "rbac-check"
    await admin.create(Namespace(metadata=ObjectMeta(name=namespace)))
    resources: list[Any] = codecs.load_all_yaml(RBAC_TEXT)
    for resource in resources:
        resource.metadata.namespace = namespace
        await admin.create(resource)
    token_request = ServiceAccountToken(metadata=ObjectMeta(name="zeroserve-gateway", namespace=namespace),
                                        spec=TokenRequestSpec(audiences=[]))
    requested = await admin.create(token_request, "zeroserve-gateway", namespace=namespace)
    await admin.close()
    assert requested.status is not None and requested.status.token
    limited = token_kubeconfig(kube, requested.status.token, tmp_path / "kubeconfig")

    backend = KubernetesBackend(KubernetesBackendSettings(kubeconfig=limited, namespace=namespace,
                                                          python=sys.executable,
                                                          cache_host_path=str(tmp_path / "cache")))
    try:
        info = await backend.start_replica(KEY, spec(model_dir), "fraud-logreg-rbac")
        assert await backend.health(info.replica_id) is ReplicaHealth.HEALTHY
        assert [r.replica_id for r in await backend.discover()] == [info.replica_id]
        await backend.stop_replica(info.replica_id, 1)
    finally:
        await backend.close()


RBAC_TEXT = RBAC.read_text()
