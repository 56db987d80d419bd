"""The local backend with real replica processes, driven by the real autoscaler loop and clock.

Windows are short (2 s stable, 1 s grace) so that scaling happens in seconds; every process a test
starts is stopped by the fixture's ``finally`` (``Autoscaler.stop`` closes the backend).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from autoscaler.backend import GpuCapacity, ReplicaHealth, ReplicaStartError
from autoscaler.backends.local import (
    LocalBackend,
    announced_optimization,
    gpu_batching,
    remove_stale_socket_dirs,
    runtime_argv,
)
from autoscaler.lifecycle import DeploymentState
from autoscaler.loop import Autoscaler
from autoscaler.settings import LocalBackendSettings
from autoscaler.spec import AutoscalingSpec, BatchingSpec, EntitySpec, WorkloadSize
from autoscaler.testing import RecordingListener
from autoscaler.types import EntityKey, ReplicaOptimization
from runtime.devices import Accelerators, Gpu

KEY = EntityKey("iris", "logreg")
FAST = AutoscalingSpec(stable_window_s=2.0, scale_to_zero_grace_s=1.0, max_provisioned_concurrency=12)
INPUT = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [0.9, 0.1, 0.2, 0.3]}]}


async def eventually(condition: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Local:
    backend: LocalBackend
    scaler: Autoscaler
    listener: RecordingListener

    def ready(self) -> int:
        return len(self.scaler.replicas(KEY))


@pytest.fixture
async def local(replica_environment: dict[str, str]) -> AsyncIterator[Local]:
    backend = LocalBackend(warm_pool_size=1, environment=replica_environment)
    listener = RecordingListener()
    scaler = Autoscaler(backend, listener=listener, tick_s=0.2, backoff_base_s=0.2)
    await scaler.start()
    try:
        yield Local(backend, scaler, listener)
    finally:
        await scaler.stop()
    assert backend.list_replicas() == []


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _mode(path: str) -> int:
    return os.stat(path).st_mode & 0o777


def spec_for(uri: str, **scaling: object) -> EntitySpec:
    return EntitySpec(uri, "logreg", autoscaling=dataclasses.replace(FAST, **scaling))  # type: ignore[arg-type]


async def test_zero_to_one_on_the_first_poke_then_back_to_zero(local: Local, onnx_model_uri: str) -> None:
    assert local.backend.pool is not None
    await local.backend.pool.wait_full()
    local.scaler.apply(KEY, spec_for(onnx_model_uri))
    assert local.ready() == 0
    local.scaler.poke(KEY)
    await eventually(lambda: local.ready() == 1, what="the first replica")
    [replica] = local.scaler.replicas(KEY)
    assert local.backend.started_from_pool(replica.replica_id)
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{replica.url}/v2/models/logreg/infer", json=INPUT)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [1]
    # It also listens on a Unix socket in the backend's private directory: the router's way in.
    assert replica.unix_socket is not None and _exists(replica.unix_socket)
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=replica.unix_socket)) as client:
        over_socket = await client.post("http://replica/v2/models/logreg/infer", json=INPUT)
    assert over_socket.json()["outputs"][0]["data"] == [1]
    # The warm-pool worker's ready line said how it serves the model; the entity keeps it.
    graph = ReplicaOptimization("onnx", "the model is an ONNX graph; nothing to convert", "auto")
    assert replica.optimization == graph
    assert local.scaler.status(KEY).optimization == graph
    # No traffic: zero after the 2 s window + 1 s grace, drained through the listener first.
    await eventually(lambda: local.ready() == 0, timeout_s=10, what="scale to zero")
    await local.scaler.settle()
    assert local.listener.events[-2:] == [("draining", replica.replica_id), ("gone", replica.replica_id)]
    assert local.scaler.status(KEY).history[-1].to_replicas == 0
    logs = local.scaler.replica_logs(KEY)
    assert f"--- replica {replica.replica_id} (GONE) ---" in logs
    assert "ZEROSERVE_REPLICA_READY" in logs
    assert "stopped (exit code 0)" in logs
    assert local.scaler.status(KEY).optimization == graph  # still known at zero


async def test_one_to_n_under_load_then_down_to_the_floor(local: Local, onnx_model_uri: str) -> None:
    local.scaler.apply(KEY, spec_for(onnx_model_uri, min_provisioned_concurrency=4))  # floor 1
    await eventually(lambda: local.ready() == 1, what="the floor replica")
    # 8 concurrent / 2.8 per replica -> 3 replicas (the ceiling: 12 / 4).
    deadline = time.monotonic() + 30
    while local.ready() < 3 and time.monotonic() < deadline:
        local.scaler.report(KEY, in_flight=6, queued=2)
        await asyncio.sleep(0.1)
    replicas = local.scaler.replicas(KEY)
    assert len(replicas) == 3
    assert len({replica.url for replica in replicas}) == 3  # each on its own port
    async with httpx.AsyncClient() as client:
        for replica in replicas:
            assert (await client.post(f"{replica.url}/v2/models/logreg/infer", json=INPUT)).status_code == 200
    # Load gone: back to the reserved floor, which then holds while idle.
    local.scaler.report(KEY, in_flight=0, queued=0)
    await eventually(lambda: local.ready() == 1, timeout_s=15, what="scale down to the floor")
    [kept] = local.scaler.replicas(KEY)
    await asyncio.sleep(3.5)  # longer than the window + grace
    assert [replica.replica_id for replica in local.scaler.replicas(KEY)] == [kept.replica_id]
    assert local.scaler.status(KEY).deployment is DeploymentState.READY


async def test_a_sigkilled_replica_is_replaced(local: Local, onnx_model_uri: str) -> None:
    local.scaler.apply(KEY, spec_for(onnx_model_uri, scale_to_zero_enabled=False))
    await eventually(lambda: local.ready() == 1, what="the floor replica")
    [victim] = local.scaler.replicas(KEY)
    pid = local.backend.pid(victim.replica_id)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    crash_seen = ("gone", victim.replica_id)
    await eventually(lambda: crash_seen in local.listener.events, what="the crash to be seen")
    await eventually(lambda: local.ready() == 1, what="a replacement")
    [replacement] = local.scaler.replicas(KEY)
    assert replacement.replica_id != victim.replica_id
    assert local.backend.pid(replacement.replica_id) != pid
    assert any(f"replica {victim.replica_id} exited unexpectedly" in record.reason
               for record in local.scaler.status(KEY).history)
    assert "exited unexpectedly (exit code -9)" in local.backend.logs(victim.replica_id)


async def test_a_model_that_fails_to_load_fails_the_entity_without_endless_retries(
    local: Local, broken_model_uri: str
) -> None:
    local.scaler.apply(KEY, spec_for(broken_model_uri))
    local.scaler.poke(KEY)
    await eventually(lambda: KEY in local.listener.failures, timeout_s=90, what="the entity to fail")
    status = local.scaler.status(KEY)
    assert status.deployment is DeploymentState.FAILED
    assert status.failed_reason is not None
    assert "3 replica starts failed" in status.failed_reason
    assert "exited with code 1 before it was ready" in status.failed_reason
    assert "cannot load model" in status.failed_reason  # the runtime's own message, from the log tail
    starts = sum(1 for record in status.history if "failed to start" in record.reason)
    local.scaler.poke(KEY)
    await asyncio.sleep(1.5)
    after = local.scaler.status(KEY)
    assert sum(1 for record in after.history if "failed to start" in record.reason) == starts == 2
    assert after.starting == after.ready == 0


async def test_start_timeout_kills_the_process_and_keeps_its_logs(
    onnx_model_uri: str, replica_environment: dict[str, str]
) -> None:
    backend = LocalBackend(warm_pool_size=0, environment=replica_environment)
    await backend.open()
    try:
        spec = dataclasses.replace(spec_for(onnx_model_uri), start_timeout_s=0.05)
        with pytest.raises(ReplicaStartError, match=r"replica slow-1 was not ready within 0.05 s"):
            await backend.start_replica(KEY, spec, "slow-1")
        assert backend.list_replicas() == []
        assert await backend.health("slow-1") is ReplicaHealth.EXITED
    finally:
        await backend.close()


async def test_a_replica_over_its_memory_limit_is_killed_saying_so(
    onnx_model_uri: str, replica_environment: dict[str, str]
) -> None:
    # 20 MiB is less than any Python process: the replica is killed while it starts, as a container
    # whose model does not fit its workload size's memory would be.
    backend = LocalBackend(LocalBackendSettings(replica_memory_limit_mib=20), warm_pool_size=0,
                           environment=replica_environment)
    await backend.open()
    try:
        with pytest.raises(ReplicaStartError, match=r"killed for using [\d,]+ MiB of memory, over its "
                                                    r"limit of 20 MiB"):
            await backend.start_replica(KEY, spec_for(onnx_model_uri), "big-1")
        assert "over its limit of 20 MiB" in backend.logs("big-1")
    finally:
        await backend.close()


async def test_a_gpu_replica_gets_its_own_device_and_refuses_when_the_libraries_cannot_use_it(
    onnx_model_uri: str, replica_environment: dict[str, str]
) -> None:
    # Two GPUs stand in for the driver's answer (none exists here); the replica processes are real, and
    # this machine's onnxruntime (no CUDA provider) makes each refuse to start, saying why.
    backend = LocalBackend(warm_pool_size=1, environment=replica_environment)
    backend._accelerators = Accelerators((Gpu(0, "stand-in", 16_000), Gpu(1, "stand-in", 16_000)),
                                         ("CPUExecutionProvider",), None, "test")
    await backend.open()
    try:
        assert await backend.gpu_capacity() == GpuCapacity(2, "this machine (GPU 0 stand-in (16,000 MiB), "
                                                              "GPU 1 stand-in (16,000 MiB))")
        spec = dataclasses.replace(spec_for(onnx_model_uri), workload_type="GPU_SMALL")
        with pytest.raises(ReplicaStartError, match="no CUDA execution provider"):
            await backend.start_replica(KEY, spec, "gpu-1")
        logs = backend.logs("gpu-1")
        assert "becomes replica" not in logs  # a fresh process, never a warm-pool worker
        assert backend._gpu_of == {}  # its device is free again
        # Held devices are not handed out twice: with both taken, the next GPU replica is refused.
        backend._gpu_of = {"a": 0, "b": 1}
        with pytest.raises(ReplicaStartError, match=r"no free GPU for replica gpu-2: each of this machine's "
                                                    r"2 GPU\(s\) serves a replica already"):
            await backend.start_replica(KEY, spec, "gpu-2")
    finally:
        await backend.close()


def test_gpu_replicas_batch_larger_unless_the_spec_says() -> None:
    spec = EntitySpec("file:///m", "m", workload_type="GPU_SMALL")
    assert gpu_batching(spec) == ["--max-batch-size", "256", "--max-batch-delay-ms", "5"]
    told = dataclasses.replace(spec, batching=BatchingSpec(max_batch_size=32))
    assert gpu_batching(told) == ["--max-batch-delay-ms", "5"]
    assert gpu_batching(dataclasses.replace(spec, batching=BatchingSpec(enabled=False))) == []


def test_the_memory_limit_is_the_workload_sizes_unless_set() -> None:
    assert [size.memory_mib for size in WorkloadSize] == [2048, 4096, 8192]
    assert LocalBackendSettings().replica_memory_limit_mib is None
    assert LocalBackendSettings(replica_memory_limit_mib=0).replica_memory_limit_mib == 0  # no limit


async def test_import_time_environment_forces_a_fresh_process(
    onnx_model_uri: str, replica_environment: dict[str, str]
) -> None:
    backend = LocalBackend(warm_pool_size=1, environment=replica_environment)
    await backend.open()
    try:
        assert backend.pool is not None
        await backend.pool.wait_full()
        spec = dataclasses.replace(spec_for(onnx_model_uri), environment_vars={"OMP_NUM_THREADS": "1"})
        info = await backend.start_replica(KEY, spec, "fresh-1")
        assert not backend.started_from_pool("fresh-1")
        assert info.unix_socket is not None and _exists(info.unix_socket)
        socket_dir = os.path.dirname(info.unix_socket)
        assert _mode(socket_dir) == 0o700
        assert info.optimization is not None and info.optimization.path == "onnx"
        assert backend.pool.idle == 1  # the pooled worker was not used
        assert await backend.health("fresh-1") is ReplicaHealth.HEALTHY
        assert [replica.replica_id for replica in backend.list_replicas()] == [info.replica_id]
        await backend.stop_replica("fresh-1", timeout_s=5.0)
        assert await backend.health("fresh-1") is ReplicaHealth.EXITED
        assert "stopped (exit code 0)" in backend.logs("fresh-1")
        assert not _exists(info.unix_socket)  # the replica removed it on its way out
    finally:
        await backend.close()
    assert not _exists(socket_dir)


async def test_unix_sockets_can_be_turned_off(
    onnx_model_uri: str, replica_environment: dict[str, str]
) -> None:
    backend = LocalBackend(warm_pool_size=0, environment=replica_environment, unix_sockets=False)
    await backend.open()
    try:
        info = await backend.start_replica(KEY, spec_for(onnx_model_uri), "tcp-only")
        assert info.unix_socket is None  # the router then uses the replica's loopback port
        assert await backend.health("tcp-only") is ReplicaHealth.HEALTHY
    finally:
        await backend.close()


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def _dead_pid() -> int:
    """The pid of a process that has exited (reaped, so nothing answers to it)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_socket_folders_of_dead_gateways_are_removed_and_others_kept(tmp_path: Path) -> None:
    dead = tmp_path / f"zeroserve-{_dead_pid()}-abc123"
    dead.mkdir(mode=0o700)
    (dead / "r1.sock").write_bytes(b"")  # a socket file left behind, as after a SIGKILL
    live = tmp_path / f"zeroserve-{os.getpid()}-def456"  # a running gateway's folder
    live.mkdir()
    unrelated = tmp_path / "zeroserve-notapid"
    unrelated.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_bytes(b"data")
    link = tmp_path / f"zeroserve-{_dead_pid()}-link"  # a symlink by that name is not followed
    link.symlink_to(elsewhere)

    assert remove_stale_socket_dirs(str(tmp_path)) == [str(dead)]
    assert not dead.exists()
    assert live.is_dir() and unrelated.is_dir() and link.is_symlink()
    assert (elsewhere / "keep").read_bytes() == b"data"


async def test_open_clears_socket_folders_of_dead_gateways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / f"zeroserve-{_dead_pid()}-xyz"
    stale.mkdir()
    backend = LocalBackend(warm_pool_size=0)
    await backend.open()
    try:
        names = _names(tmp_path)  # the stale folder is gone; this backend's own is named by its pid
        assert len(names) == 1 and names[0].startswith(f"zeroserve-{os.getpid()}-")
        assert _mode(str(tmp_path / names[0])) == 0o700
    finally:
        await backend.close()
    assert _names(tmp_path) == []


async def test_a_socket_folder_removed_from_outside_means_tcp_not_a_recreated_folder(
    onnx_model_uri: str, replica_environment: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    backend = LocalBackend(warm_pool_size=0, environment=replica_environment)
    await backend.open()
    try:
        (folder,) = _names(tmp_path)
        os.rmdir(tmp_path / folder)  # e.g. a tmp cleaner
        info = await backend.start_replica(KEY, spec_for(onnx_model_uri), "after-sweep")
        assert info.unix_socket is None
        assert await backend.health("after-sweep") is ReplicaHealth.HEALTHY
        assert _names(tmp_path) == []  # not re-created: the name could be anyone's by now
        (tmp_path / folder).mkdir()  # and then somebody else makes a folder by that name
        (tmp_path / folder / "theirs").write_bytes(b"data")
    finally:
        await backend.close()
    assert (tmp_path / folder / "theirs").read_bytes() == b"data"  # close() leaves it alone


def test_runtime_arguments() -> None:
    spec = EntitySpec("s3://models/iris/3", "iris", model_version="3",
                      batching=BatchingSpec(max_batch_size=16, max_batch_delay_ms=1.5),
                      autoscaling=AutoscalingSpec(container_concurrency=8), drain_timeout_s=10)
    assert runtime_argv(spec, "127.0.0.1") == [
        "--model-uri", "s3://models/iris/3", "--port", "0", "--host", "127.0.0.1", "--name", "iris",
        "--concurrency", "8", "--drain-timeout", "10", "--optimization", "auto", "--model-version", "3",
        "--max-batch-size", "16", "--max-batch-delay-ms", "1.5",
    ]
    required = runtime_argv(dataclasses.replace(spec, optimization="required"), "127.0.0.1")
    assert required[required.index("--optimization") + 1] == "required"
    unbatched = dataclasses.replace(spec, batching=BatchingSpec(enabled=False), model_version=None)
    assert runtime_argv(unbatched, "::1")[-1] == "--no-batching"


@pytest.mark.parametrize(
    ("announced", "expected"),
    [
        ({"path": "native", "mode": "off", "reason": "optimization is off"},
         ReplicaOptimization("native", "optimization is off", "off")),
        ({"path": "onnx", "reason": "verified"}, ReplicaOptimization("onnx", "verified", "auto")),
        (None, None),  # an older runtime's ready line has no optimization
        ({"path": "onnx"}, None),
        ({"path": 1, "reason": "x"}, None),
        ("onnx", None),
    ],
    ids=["native", "mode-missing", "absent", "reason-missing", "path-not-text", "not-an-object"],
)
def test_announced_optimization(announced: object, expected: ReplicaOptimization | None) -> None:
    assert announced_optimization(announced) == expected
