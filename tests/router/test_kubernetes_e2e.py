"""A gateway process whose replicas are pods on a real Kubernetes control plane (``ZEROSERVE_BACKEND=
kubernetes``; fake-node runs each pod's command as a local process: no image pull, no container runtime)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from runtime.examples import logreg_rows, make_logreg_onnx
from tests.router.gateway_process import GatewayProcess, wait_for

pytestmark = pytest.mark.slow

API = "/api/2.0/serving-endpoints"
BODY = {"inputs": logreg_rows(20, 1).tolist()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_logreg_onnx(tmp_path_factory.mktemp("models") / "logreg", n_features=20)


def pod_names(kube: str, endpoint: str) -> list[str]:
    from lightkube import AsyncClient, KubeConfig
    from lightkube.resources.core_v1 import Pod

    async def names() -> list[str]:
        client = AsyncClient(config=KubeConfig.from_file(kube), namespace="default")
        try:
            listed = client.list(Pod, labels={"zeroserve.io/endpoint": endpoint})
            found = [str(pod.metadata.name) async for pod in listed
                     if pod.metadata is not None and pod.metadata.deletionTimestamp is None]
            return sorted(found)
        finally:
            await client.close()

    return asyncio.run(names())


def delete_pod(kube: str, name: str, grace_s: int) -> None:
    from lightkube import AsyncClient, KubeConfig
    from lightkube.resources.core_v1 import Pod

    async def delete() -> None:
        client = AsyncClient(config=KubeConfig.from_file(kube), namespace="default")
        try:
            await client.delete(Pod, name, grace_period=grace_s)
        finally:
            await client.close()

    asyncio.run(delete())


def create(gateway: GatewayProcess, name: str, model_dir: Path, **entity: Any) -> None:
    served = {"name": "logreg", "entity_name": model_dir.as_uri(), "entity_version": "1", **entity}
    if "max_provisioned_concurrency" not in served:
        served["workload_size"] = "Small"
    with gateway.client(timeout=30) as client:
        answer = client.post(API, json={"name": name, "config": {"served_entities": [served]}})
        assert answer.status_code == 200, answer.text


def query(gateway: GatewayProcess, name: str) -> httpx.Response:
    with gateway.client(timeout=60) as client:
        return client.post(f"/serving-endpoints/{name}/invocations", json=BODY)


def test_endpoints_run_as_pods(kube: str, tmp_path: Path, model_dir: Path) -> None:
    env = {"ZEROSERVE_BACKEND": "kubernetes", "ZEROSERVE_KUBERNETES_KUBECONFIG": kube,
           "ZEROSERVE_KUBERNETES_PYTHON": sys.executable,
           "ZEROSERVE_KUBERNETES_CACHE_HOST_PATH": str(tmp_path / "node-cache")}
    gateway = GatewayProcess(tmp_path / "home", env).start()
    try:
        # From zero: the first query waits while a pod starts, and is answered by it.
        create(gateway, "sleepy", model_dir, scale_to_zero_enabled=True,
               autoscaling={"stable_window_s": 2, "scale_to_zero_grace_s": 0})
        with gateway.client(timeout=30) as client:
            wait_for(lambda: client.get(f"{API}/sleepy").json()["state"]["config_update"] == "NOT_UPDATING",
                     30, "the config")
        assert pod_names(kube, "sleepy") == []
        started = time.monotonic()
        answer = query(gateway, "sleepy")
        assert answer.status_code == 200, answer.text
        assert time.monotonic() - started < 30
        assert len(pod_names(kube, "sleepy")) == 1
        # Idle: back to zero, its pod gone.
        wait_for(lambda: pod_names(kube, "sleepy") == [], 60, "the idle endpoint to scale to zero")

        # A floor of two pods (8 concurrent requests at 4 each), kept across a gateway restart.
        create(gateway, "floor", model_dir, scale_to_zero_enabled=False, min_provisioned_concurrency=8,
           max_provisioned_concurrency=8)
        with gateway.client(timeout=30) as client:
            wait_for(lambda: client.get(f"{API}/floor").json()["config"]["served_entities"][0]["state"][
                "replicas"]["ready"] == 2 if client.get(f"{API}/floor").json().get("config") else False,
                60, "two ready floor pods")
        floor = pod_names(kube, "floor")
        assert len(floor) == 2
        assert query(gateway, "floor").status_code == 200
        gateway.stop()
        assert pod_names(kube, "floor") == floor  # the pods are the cluster's, not the gateway's
        gateway.start()
        assert query(gateway, "floor").status_code == 200
        time.sleep(3)  # a few autoscaler ticks: it adopted the pods, it started no others
        assert pod_names(kube, "floor") == floor

        # Deleted: nothing of it is left on the cluster.
        with gateway.client(timeout=30) as client:
            assert client.delete(f"{API}/floor").status_code == 200
            assert client.delete(f"{API}/sleepy").status_code == 200
        wait_for(lambda: pod_names(kube, "floor") == [] and pod_names(kube, "sleepy") == [], 60,
                 "the pods to go")

        # A pod that cannot start: the entity fails with Kubernetes' reason, and a waiting query hears it.
        create(gateway, "broken", tmp_path / "no-such-model", scale_to_zero_enabled=False)
        with gateway.client(timeout=30) as client:
            def failed() -> dict[str, Any] | None:
                endpoint = client.get(f"{API}/broken").json()
                config = endpoint.get("config") or endpoint["pending_config"]
                entity = config["served_entities"][0]["state"]
                return entity if entity["deployment"] == "DEPLOYMENT_FAILED" else None

            state = wait_for(failed, 90, "the deployment to fail")
        assert "cannot start" in state["deployment_state_message"], state
        assert "container exited" in state["deployment_state_message"], state
    finally:
        gateway.stop()


def test_pods_come_and_go_without_losing_requests(kube: str, tmp_path: Path, model_dir: Path) -> None:
    import threading

    env = {"ZEROSERVE_BACKEND": "kubernetes", "ZEROSERVE_KUBERNETES_KUBECONFIG": kube,
           "ZEROSERVE_KUBERNETES_PYTHON": sys.executable,
           "ZEROSERVE_KUBERNETES_CACHE_HOST_PATH": str(tmp_path / "node-cache")}
    gateway = GatewayProcess(tmp_path / "home", env).start()
    failures: list[str] = []
    sent = [0]
    stop = threading.Event()

    def load() -> None:
        with gateway.client(timeout=60) as client:
            while not stop.is_set():
                answer = client.post("/serving-endpoints/steady/invocations", json=BODY)
                sent[0] += 1
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text[:200]}")

    try:
        create(gateway, "steady", model_dir, scale_to_zero_enabled=False, min_provisioned_concurrency=8,
               max_provisioned_concurrency=8)
        with gateway.client(timeout=30) as client:
            wait_for(lambda: (body := client.get(f"{API}/steady").json()).get("config") is not None and body[
                "config"]["served_entities"][0]["state"]["replicas"]["ready"] == 2, 60, "two ready pods")
        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        # A pod deleted as `kubectl delete pod --grace-period=0` does (kubectl turns 0 into 1 s without
        # --force): it drains what it holds, the router stops sending to it, a new pod replaces it.
        victim = pod_names(kube, "steady")[0]
        delete_pod(kube, victim, grace_s=1)
        wait_for(lambda: victim not in pod_names(kube, "steady") and len(pod_names(kube, "steady")) == 2,
                 60, "the replacement pod")
        # A config update with zero downtime: the new entity's pods come up, traffic moves, the old drain.
        with gateway.client(timeout=30) as client:
            served = {"name": "logreg-v2", "entity_name": model_dir.as_uri(), "entity_version": "2",
                      "scale_to_zero_enabled": False, "min_provisioned_concurrency": 4,
                      "max_provisioned_concurrency": 4}
            updated = client.put(f"{API}/steady/config", json={"served_entities": [served]})
            assert updated.status_code == 200, updated.text
            wait_for(lambda: client.get(f"{API}/steady").json()["state"]["config_update"] == "NOT_UPDATING",
                     90, "the update")
        wait_for(lambda: len(pod_names(kube, "steady")) == 1, 60, "the old pods to drain")
        time.sleep(1.0)
    finally:
        stop.set()
        gateway.stop()
    # Nothing may fail: a pod that drains finishes what it holds, and a request the router writes on an
    # idle keep-alive connection just as the pod starts draining (before the router has heard) is still
    # answered, with Connection: close (runtime.app.ReplicaProtocol lingers) rather than cut off.
    assert failures == [] and sent[0] > 50, (failures[:5], sent[0])
