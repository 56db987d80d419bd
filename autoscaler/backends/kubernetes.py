"""The Kubernetes backend: each replica is a pod running the runtime image, created and deleted through
the Kubernetes API (``ZEROSERVE_BACKEND=kubernetes``).

The client is lightkube: async-native, typed models, small (one dependency tree, fast to import), and
it speaks any cluster version through the stable ``v1`` Pod API this backend uses — the only API it
needs, present in every version since 1.0 — checked against the 1.20 test cluster. The others
considered: kubernetes_asyncio (generated, far larger, slower to import) and kr8s (untyped; it warns
that 1.20 is not supported).

A replica is a pod of the zeroserve runtime: ``python -m runtime --model-uri ... --host $(POD_IP)
--port 8080`` with the entity's served name, concurrency, batching and environment; a readiness probe
on ``/v2/health/ready`` (passes once the model is loaded and warm); ``terminationGracePeriodSeconds``
of the entity's drain timeout plus a margin (the runtime stops taking requests on SIGTERM, finishes
what it holds and exits). The backend itself probes the pod at its IP as soon as it has one, so a
replica is ready when it answers, not at the kubelet's next probe period.

Pods carry labels naming the endpoint, served entity and replica, and a ``managed-by`` label; the model
cache is a node-local volume (hostPath by default) mounted by every replica on the node, so a version
is fetched once per node. A pod that cannot start (unschedulable, image not pulled, crashing, killed
for memory) fails its start with the reason Kubernetes gives, which the entity's state shows.

Scale-ups of CPU entities take a warm generic pod from a pool (``runtime.pool``: runtime imported, no
model), relabel it out of the pool (conditionally on its resourceVersion, so two gateways cannot take
the same one), assign it the model over HTTP and refill the pool in the background — Fission's pool
pattern; with no idle pool pod, a new pod is created.

The RBAC this needs, in its namespace only (``infra/kubernetes/base/rbac.yaml``): pods (create, get, list,
watch, patch, delete) and pods/log (get).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from autoscaler.backend import GpuCapacity, ReplicaHealth, ReplicaStartError
from autoscaler.backends.local import runtime_argv
from autoscaler.probe import READY_PATH, ReadinessProbe
from autoscaler.spec import EntitySpec
from autoscaler.types import EntityKey, ReplicaInfo
from runtime.pool import ASSIGN_PATH, POOL_PATH

logger = logging.getLogger("zeroserve.autoscaler.kubernetes")
T = TypeVar("T")

MANAGED_BY = {"app.kubernetes.io/managed-by": "zeroserve", "app.kubernetes.io/component": "replica"}
ENDPOINT_LABEL = "zeroserve.io/endpoint"
ENTITY_LABEL = "zeroserve.io/served-entity"
REPLICA_LABEL = "zeroserve.io/replica"
REPLICA_ID_ANNOTATION = "zeroserve.io/replica-id"
ENDPOINT_ANNOTATION = "zeroserve.io/endpoint-name"
ENTITY_ANNOTATION = "zeroserve.io/served-entity-name"
CAPACITY_ANNOTATION = "zeroserve.io/capacity"
POOL_LABEL = "zeroserve.io/pool"
# What Kubernetes says when a container cannot start; each ends a start at once with that reason.
_FATAL_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                  "CreateContainerError", "CrashLoopBackOff", "RunContainerError"}
# Per-replica CPU requests by workload size; memory is the size's own (request = limit), CPU unbounded so
# that a replica can burst.
_SIZE_CPU = {"Small": "1", "Medium": "2", "Large": "4"}
_GPUS = {"GPU_SMALL": 1, "GPU_MEDIUM": 1, "GPU_LARGE": 4, "MULTIGPU_MEDIUM": 4}


class KubernetesBackendSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ZEROSERVE_KUBERNETES_", extra="ignore")

    namespace: str = "default"
    # A kubeconfig file; unset: the in-cluster service account, else $KUBECONFIG or ~/.kube/config.
    kubeconfig: str | None = None
    image: str = "zeroserve-runtime:latest"
    image_pull_policy: str = "IfNotPresent"
    # The interpreter in the image that runs ``-m runtime``.
    python: str = "python"
    port: int = Field(default=8080, ge=1, le=65535)
    # The node-local model cache, mounted at the same path in every replica; empty: a per-pod emptyDir.
    cache_host_path: str = "/var/cache/zeroserve"
    # A PersistentVolumeClaim to hold the cache instead (ReadWriteMany, or one per node pool), mounted
    # at cache_host_path.
    cache_pvc: str | None = None
    # GPU workload types: where their pods may go (JSON objects).
    gpu_node_selector: dict[str, str] = Field(default_factory=dict)
    gpu_tolerations: list[dict[str, Any]] = Field(default_factory=list)
    service_account: str | None = None
    # The kubelet's readiness probe period (the backend probes the pod itself, faster).
    probe_period_s: int = Field(default=1, ge=1)
    # Warm generic pods (runtime imported, no model) kept for CPU entities; a scale-up specializes one
    # instead of waiting for a new pod. 0: every replica is a new pod.
    pool_size: int = Field(default=1, ge=0, le=64)
    # Flavors a pool pod imports ahead (as the local warm pool's ZEROSERVE_WARM_POOL_PRELOAD).
    pool_preload: str = "onnx"


class KubernetesBackend:
    """Replicas as pods in one namespace (see the module docstring)."""

    # Pods are the cluster's: a gateway stopping or restarting leaves them serving (floors hold); the
    # next gateway adopts them. Deleting an endpoint deletes its pods.
    keeps_replicas = True

    def __init__(self, settings: KubernetesBackendSettings | None = None, *, probe_timeout_s: float = 2.0
                 ) -> None:
        self.settings = settings or KubernetesBackendSettings()
        self._client: Any = None
        self._probe = ReadinessProbe(probe_timeout_s)  # its client also carries the pool's calls
        self._replicas: dict[str, ReplicaInfo] = {}
        # The pod of each replica: a specialized pool pod keeps the name it was created with.
        self._pods: dict[str, str] = {}
        self._logs: dict[str, str] = {}
        self._refills: set[asyncio.Task[None]] = set()
        # Why each starting pod is not running yet, when that may pass (Unschedulable): said on timeout.
        self._waiting: dict[str, str | None] = {}
        self._pool_ids = itertools.count(1)
        self.specialized = 0  # scale-ups served from the pool (the rest created a pod)
        # Kubernetes API requests made for replicas (the benchmark reports them per scale event), and
        # for keeping the pool full (in the background, off any request's path).
        self.api_calls = 0
        self.pool_api_calls = 0

    # --- the Backend protocol ---

    async def open(self) -> None:
        if self._client is None:
            from lightkube import AsyncClient, KubeConfig

            config = (KubeConfig.from_file(self.settings.kubeconfig) if self.settings.kubeconfig
                      else KubeConfig.from_env())
            self._client = AsyncClient(config=config, namespace=self.settings.namespace)
        if not self._probe.opened:
            await self._probe.warm()
            if self.settings.pool_size > 0:
                self._refill_later()

    async def gpu_capacity(self) -> GpuCapacity:
        """The GPUs the cluster's schedulable nodes offer (``nvidia.com/gpu`` allocatable). Listing nodes
        needs a ClusterRole the namespaced Role does not give; where it is refused the answer is
        "unknown" and a GPU workload type is left to the scheduler (Unschedulable names the shortage)."""
        from lightkube import ApiError
        from lightkube.resources.core_v1 import Node

        assert self._client is not None, "open() first"
        try:
            nodes = [node async for node in self._client.list(Node)]
        except ApiError as error:
            return GpuCapacity(None, f"the cluster (its nodes cannot be listed: {error.status.message})")
        total = 0
        for node in nodes:
            if node.spec is not None and node.spec.unschedulable:
                continue
            allocatable = (node.status.allocatable if node.status is not None else None) or {}
            with contextlib.suppress(ValueError):
                total += int(str(allocatable.get("nvidia.com/gpu", "0")))
        return GpuCapacity(total, f"the cluster ({len(nodes)} node(s), {total} nvidia.com/gpu allocatable)")

    async def fill_pool(self) -> None:
        """Create pool pods until ``pool_size`` exist (shared by every gateway of the namespace)."""
        from lightkube.resources.core_v1 import Pod

        if self.settings.pool_size <= 0 or self._client is None:
            return
        self.pool_api_calls += 1
        alive = (None, "Pending", "Running")
        existing = [pod async for pod in self._client.list(Pod, labels={POOL_LABEL: "cpu"})
                    if pod.metadata.deletionTimestamp is None and pod.status.phase in alive]
        for _ in range(self.settings.pool_size - len(existing)):
            self.pool_api_calls += 1
            await self._client.create(Pod.from_dict(self.pool_manifest()))

    def _refill_later(self) -> None:
        task = asyncio.ensure_future(self.fill_pool())
        self._refills.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._refills.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                logger.warning("refilling the pod pool failed: %s", finished.exception())

        task.add_done_callback(done)

    async def start_replica(self, entity: EntityKey, spec: EntitySpec, replica_id: str) -> ReplicaInfo:
        from lightkube.resources.core_v1 import Pod

        await self.open()
        # Pool pods are CPU pods with the Small size's requests, and a pod's resources cannot change in
        # place: other entities get a pod of their own.
        poolable = spec.workload_type == "CPU" and spec.autoscaling.workload_size.value == "Small"
        if self.settings.pool_size > 0 and poolable:
            claimed = await self._specialize(entity, spec, replica_id)
            if claimed is not None:
                name, url = claimed
                self._refill_later()
                await self._within_start_timeout(self._until_answering(name, replica_id, url), name,
                                                 replica_id, spec)
                return self._ready(replica_id, name, entity, url, spec)
        name = pod_name(replica_id)
        self.api_calls += 1
        await self._client.create(Pod.from_dict(self.pod_manifest(entity, spec, replica_id)))
        url = await self._within_start_timeout(self._until_ready(name, replica_id), name, replica_id, spec)
        return self._ready(replica_id, name, entity, url, spec)

    async def _within_start_timeout(self, waiting: Coroutine[Any, Any, T], name: str, replica_id: str,
                                    spec: EntitySpec) -> T:
        """``waiting`` for the pod to serve, bounded by the spec's start timeout; the pod is deleted
        when it does not make it (or the start is cancelled)."""
        try:
            async with asyncio.timeout(spec.start_timeout_s):
                return await waiting
        except BaseException as error:
            await self._delete(name, grace_s=0)
            why = self._waiting.pop(replica_id, None)
            if isinstance(error, TimeoutError):
                late = f"replica {replica_id} (pod {name}) was not ready within {spec.start_timeout_s:g} s"
                raise ReplicaStartError(late + (f": {why}" if why else "")) from None
            raise
        finally:
            self._waiting.pop(replica_id, None)

    def _ready(self, replica_id: str, name: str, entity: EntityKey, url: str, spec: EntitySpec
               ) -> ReplicaInfo:
        info = ReplicaInfo(replica_id, entity, url, spec.autoscaling.container_concurrency)
        self._replicas[replica_id] = info
        self._pods[replica_id] = name
        logger.info("replica %s of %s ready at %s (pod %s)", replica_id, entity, url, name)
        return info

    async def _specialize(self, entity: EntityKey, spec: EntitySpec, replica_id: str
                          ) -> tuple[str, str] | None:
        """Claim an idle pool pod for the replica and assign it the model; its (name, URL), or None when
        the pool has none to give (a new pod is created instead)."""
        from lightkube import ApiError
        from lightkube.resources.core_v1 import Pod

        self.api_calls += 1
        candidates = [pod async for pod in self._client.list(Pod, labels={POOL_LABEL: "cpu"})
                      if pod.metadata.deletionTimestamp is None and pod.status.phase == "Running"
                      and pod.status.podIP]
        for pod in candidates:
            name = pod.metadata.name
            url = f"http://{_host(pod.status.podIP)}:{self.settings.port}"
            if not await self._idle(url):
                continue
            # Relabelled out of the pool, conditionally on the version we saw: of two gateways claiming
            # the same pod, one gets a conflict and tries the next.
            manifest = self.pod_manifest(entity, spec, replica_id)["metadata"]
            patch = {"metadata": {"resourceVersion": pod.metadata.resourceVersion,
                                  "labels": {**manifest["labels"], POOL_LABEL: None},
                                  "annotations": manifest["annotations"]}}
            try:
                self.api_calls += 1
                await self._client.patch(Pod, name, patch)
            except ApiError as error:
                if error.status.code == 409:
                    continue
                raise
            argv = self.pod_manifest(entity, spec, replica_id)["spec"]["containers"][0]["args"]
            argv = [pod.status.podIP if part == "$(POD_IP)" else part for part in argv]
            env = dict(spec.environment_vars)
            try:
                answer = await self._probe.client.post(f"{url}{ASSIGN_PATH}", json={"argv": argv, "env": env})
            except httpx.HTTPError as error:
                logger.warning("pool pod %s did not take its assignment: %s", name, error)
                await self._delete(name, grace_s=0)
                continue
            if answer.status_code != 202:
                logger.warning("pool pod %s refused its assignment: %s", name, answer.text[:200])
                await self._delete(name, grace_s=0)
                continue
            self.specialized += 1
            return name, url
        return None

    async def _idle(self, url: str) -> bool:
        try:
            answer = await self._probe.client.get(f"{url}{POOL_PATH}")
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    async def _until_answering(self, name: str, replica_id: str, url: str) -> None:
        """Probe a specialized pod until its model answers; look at the pod every half second for a
        reason it cannot (its process exits when the model cannot be loaded)."""
        from lightkube.resources.core_v1 import Pod

        looked = time.monotonic()
        while not await self._probe(url):
            if time.monotonic() - looked >= 0.5:
                looked = time.monotonic()
                self.api_calls += 1
                pod = await self._client.get(Pod, name)
                self._waiting[replica_id] = waiting_reason(pod)
                problem = start_problem(pod)
                if problem is not None:
                    await self._keep_logs(name, replica_id)
                    raise ReplicaStartError(f"replica {replica_id} (pod {name}) cannot start: {problem}",
                                            log_tail=self._logs.get(replica_id, ""))
            await asyncio.sleep(0.02)

    def pool_manifest(self) -> dict[str, Any]:
        """A generic runtime pod: libraries imported, no model, waiting for an assignment."""
        settings = self.settings
        generic = EntitySpec(model_uri="pool:", served_name="pool")
        template = self.pod_manifest(EntityKey("pool", "pool"), generic, "pool")
        container = template["spec"]["containers"][0]
        container["command"] = [settings.python, "-m", "runtime.pool"]
        container["args"] = ["--host", "$(POD_IP)", "--port", str(settings.port),
                             "--preload", settings.pool_preload]
        # Long enough for any entity's drain once specialized (a grace period cannot change later).
        template["spec"]["terminationGracePeriodSeconds"] = 65
        template["metadata"] = {
            "name": f"zs-pool-{uuid.uuid4().hex[:10]}",
            "namespace": settings.namespace,
            "labels": {**MANAGED_BY, POOL_LABEL: "cpu", "app.kubernetes.io/component": "pool"},
        }
        return template

    async def stop_replica(self, replica_id: str, timeout_s: float) -> None:
        self._replicas.pop(replica_id, None)
        name = self._pods.pop(replica_id, pod_name(replica_id))
        await self._keep_logs(name, replica_id)
        # The pod is marked for deletion at once (the router has already stopped sending to it); the
        # runtime drains within its grace period.
        await self._delete(name, grace_s=max(1, int(timeout_s) + 1))

    async def health(self, replica_id: str) -> ReplicaHealth:
        from lightkube import ApiError
        from lightkube.resources.core_v1 import Pod

        name = self._pods.get(replica_id, pod_name(replica_id))
        try:
            self.api_calls += 1
            pod = await self._client.get(Pod, name)
        except ApiError as error:
            if error.status.code == 404:
                self._replicas.pop(replica_id, None)
                return ReplicaHealth.EXITED
            raise
        if pod.metadata.deletionTimestamp is not None or pod.status.phase in ("Failed", "Succeeded"):
            self._replicas.pop(replica_id, None)
            return ReplicaHealth.EXITED
        info = self._replicas.get(replica_id)
        if info is None or not await self._probe(info.url):
            return ReplicaHealth.UNHEALTHY
        return ReplicaHealth.HEALTHY

    def list_replicas(self) -> list[ReplicaInfo]:
        return list(self._replicas.values())

    def logs(self, replica_id: str) -> str:
        kept = self._logs.get(replica_id)
        if kept is not None:
            return kept
        name = pod_name(replica_id)
        return f"(pod {name} is running: kubectl logs -n {self.settings.namespace} {name})\n"

    async def close(self) -> None:
        """Delete every pod this backend runs (the last gateway stopping in an orderly way)."""
        for task in list(self._refills):
            task.cancel()
        await asyncio.gather(*(self.stop_replica(replica_id, 5.0) for replica_id in list(self._replicas)),
                             return_exceptions=True)
        await self._close_clients()

    # --- handing over between gateways, and adopting what runs (HandoverBackend) ---

    async def adopt(self, replica: ReplicaInfo, pid: int | None) -> bool:
        if replica.replica_id in self._replicas:
            return True
        if not await self._probe(replica.url):
            return False
        self._replicas[replica.replica_id] = replica
        return True

    async def detach(self) -> None:
        for task in list(self._refills):
            task.cancel()
        self._replicas.clear()
        self._pods.clear()
        await self._close_clients()

    async def discover(self) -> list[ReplicaInfo]:
        """The running replica pods in the namespace (a restarted gateway adopts those that answer their
        readiness probe: no duplicates, no gap)."""
        from lightkube.resources.core_v1 import Pod

        await self.open()
        selector = ",".join(f"{key}={value}" for key, value in MANAGED_BY.items())
        found = []
        self.api_calls += 1
        async for pod in self._client.list(Pod, labels=_labels_dict(selector)):
            labels = pod.metadata.labels or {}
            # Ready or not by the kubelet's last probe: adopting probes it again, now.
            if pod.metadata.deletionTimestamp is not None or not pod.status.podIP:
                continue
            if pod.status.phase != "Running":
                continue
            annotations = pod.metadata.annotations or {}
            # Labels are cut to what label values allow; the annotations keep the names as they are.
            key = EntityKey(annotations.get(ENDPOINT_ANNOTATION) or labels.get(ENDPOINT_LABEL, ""),
                            annotations.get(ENTITY_ANNOTATION) or labels.get(ENTITY_LABEL, ""))
            capacity = int(annotations.get(CAPACITY_ANNOTATION, "4"))
            replica_id = annotations.get(REPLICA_ID_ANNOTATION)
            if replica_id is None:
                continue  # a pool pod waiting for a model
            self._pods[replica_id] = pod.metadata.name
            found.append(ReplicaInfo(replica_id, key,
                                     f"http://{_host(pod.status.podIP)}:{self.settings.port}", capacity))
        return found

    # --- the pod ---

    def pod_manifest(self, entity: EntityKey, spec: EntitySpec, replica_id: str) -> dict[str, Any]:
        settings = self.settings
        argv = runtime_argv(spec, "$(POD_IP)")
        argv[argv.index("--port") + 1] = str(settings.port)
        env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
               {"name": "PYTHONUNBUFFERED", "value": "1"}]
        volumes: list[dict[str, Any]] = []
        mounts: list[dict[str, Any]] = []
        cache = settings.cache_host_path or "/var/cache/zeroserve"
        source: dict[str, Any]
        if settings.cache_pvc:
            source = {"persistentVolumeClaim": {"claimName": settings.cache_pvc}}
        elif settings.cache_host_path:
            source = {"hostPath": {"path": cache, "type": "DirectoryOrCreate"}}
        else:
            source = {"emptyDir": {}}
        volumes.append({"name": "model-cache", **source})
        mounts.append({"name": "model-cache", "mountPath": cache})
        env.append({"name": "ZEROSERVE_CACHE_DIR", "value": cache})
        env += [{"name": key, "value": value} for key, value in spec.environment_vars.items()]
        size = spec.autoscaling.workload_size
        cpu, memory = _SIZE_CPU[size.value], f"{size.memory_mib // 1024}Gi"
        resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}
        pod_spec: dict[str, Any] = {
            "restartPolicy": "Never",  # a replica that dies is replaced by the autoscaler, not restarted
            "terminationGracePeriodSeconds": int(spec.drain_timeout_s) + 5,
            "containers": [{
                "name": "runtime",
                "image": settings.image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": [settings.python, "-m", "runtime"],
                "args": argv,
                "env": env,
                "ports": [{"name": "http", "containerPort": settings.port, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": READY_PATH, "port": settings.port},
                                   "periodSeconds": settings.probe_period_s, "failureThreshold": 3},
                "resources": resources,
                "volumeMounts": mounts,
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
            "volumes": volumes,
        }
        gpus = _GPUS.get(spec.workload_type)
        if gpus:
            resources["requests"]["nvidia.com/gpu"] = str(gpus)
            resources["limits"]["nvidia.com/gpu"] = str(gpus)
            if settings.gpu_node_selector:
                pod_spec["nodeSelector"] = dict(settings.gpu_node_selector)
            if settings.gpu_tolerations:
                pod_spec["tolerations"] = list(settings.gpu_tolerations)
        if settings.service_account:
            pod_spec["serviceAccountName"] = settings.service_account
        labels = {**MANAGED_BY, ENDPOINT_LABEL: _label(entity.endpoint),
                  ENTITY_LABEL: _label(entity.served_entity), REPLICA_LABEL: _label(replica_id)}
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name(replica_id), "namespace": settings.namespace, "labels": labels,
                         "annotations": {CAPACITY_ANNOTATION: str(spec.autoscaling.container_concurrency),
                                         REPLICA_ID_ANNOTATION: replica_id,
                                         ENDPOINT_ANNOTATION: entity.endpoint,
                                         ENTITY_ANNOTATION: entity.served_entity,
                                         "zeroserve.io/model-uri": spec.model_uri}},
            "spec": pod_spec,
        }

    async def _until_ready(self, name: str, replica_id: str) -> str:
        """The pod's URL once it answers its readiness probe; ``ReplicaStartError`` with Kubernetes'
        reason when it cannot start."""
        from lightkube.resources.core_v1 import Pod

        url: str | None = None
        self.api_calls += 1
        watch = self._client.watch(Pod, namespace=self.settings.namespace, fields={"metadata.name": name})
        events = watch.__aiter__()
        pending: asyncio.Task[Any] | None = None
        try:
            while True:
                if url is not None and await self._probe(url):
                    return url
                if pending is None:
                    pending = asyncio.ensure_future(events.__anext__())
                done, _ = await asyncio.wait({pending}, timeout=0.05 if url is not None else None)
                if not done:
                    continue
                _, pod = pending.result()
                pending = None
                self._waiting[replica_id] = waiting_reason(pod)
                problem = start_problem(pod)
                if problem is not None:
                    await self._keep_logs(name, replica_id)
                    raise ReplicaStartError(f"replica {replica_id} (pod {name}) cannot start: {problem}",
                                            log_tail=self._logs.get(replica_id, ""))
                if pod.status.podIP and url is None:
                    url = f"http://{_host(pod.status.podIP)}:{self.settings.port}"
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            with contextlib.suppress(Exception):
                await events.aclose()

    async def _delete(self, name: str, grace_s: int) -> None:
        from lightkube import ApiError
        from lightkube.resources.core_v1 import Pod

        try:
            self.api_calls += 1
            await self._client.delete(Pod, name, grace_period=grace_s)
        except ApiError as error:
            if error.status.code != 404:
                logger.warning("deleting pod %s failed: %s", name, error)

    async def _keep_logs(self, name: str, replica_id: str) -> None:
        """The pod's log (pods/log), kept for the logs API once the pod is gone; its absence says why."""
        try:
            self.api_calls += 1
            lines = [line async for line in self._client.log(name, namespace=self.settings.namespace,
                                                              tail_lines=2000)]
            self._logs[replica_id] = "".join(lines)
        except Exception as error:  # no kubelet to ask, RBAC without pods/log: say so, do not fail
            self._logs[replica_id] = f"(the log of pod {name} could not be read: {error})\n"
        while len(self._logs) > 64:
            self._logs.pop(next(iter(self._logs)))

    async def _close_clients(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None
        await self._probe.aclose()


def start_problem(pod: Any) -> str | None:
    """Why a pod cannot become a replica, in Kubernetes' words, or None while it may still."""
    status = pod.status
    if status is None:
        return None
    for container in status.containerStatuses or []:
        state = container.state
        if state is None:
            continue
        if state.waiting is not None and state.waiting.reason in _FATAL_WAITING:
            return f"{state.waiting.reason}: {state.waiting.message or 'the container cannot start'}"
        if state.terminated is not None:
            ended = state.terminated
            reason = ", ".join(part for part in (ended.reason, f"exit code {ended.exitCode}") if part)
            # With FallbackToLogsOnError the kubelet puts the log's last lines here: the runtime's error.
            message = f": {ended.message.strip()[-1000:]}" if ended.message and ended.message.strip() else ""
            return f"the container exited ({reason}) before it was ready{message}"
    if status.phase in ("Failed", "Succeeded"):
        return f"the pod ended ({status.phase}{': ' + status.reason if status.reason else ''})"
    return None


def waiting_reason(pod: Any) -> str | None:
    """Why a pod has not started yet when that may pass (no node fits it now: a node may become ready,
    a cluster autoscaler may add one): reported if the start times out, not fatal before."""
    status = pod.status
    for condition in (status.conditions if status is not None else None) or []:
        unschedulable = condition.status == "False" and condition.reason == "Unschedulable"
        if condition.type == "PodScheduled" and unschedulable:
            return f"Unschedulable: {condition.message or 'no node fits the pod'}"
    return None


def pod_name(replica_id: str) -> str:
    """A DNS-1123 pod name for a replica id (lowercase; other characters become '-')."""
    cleaned = "".join(ch if ch.isalnum() else "-" for ch in replica_id.lower()).strip("-")
    return f"zs-{cleaned}"[:63].rstrip("-")


def _label(value: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in value)
    return cleaned[:63].strip("-_.") or "x"


def _labels_dict(selector: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in selector.split(","))


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip

