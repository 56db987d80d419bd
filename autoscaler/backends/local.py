"""The local backend: each replica is a process on this machine, on its own loopback port.

A replica is ``python -m runtime`` (through ``autoscaler.backends._worker``, which adds a
parent-death guard), or an idle warm-pool worker handed the same arguments (see ``warm_pool``). It is
ready when it printed ``ZEROSERVE_REPLICA_READY {"port": ..., "pid": ...}`` and answers
``GET /v2/health/ready`` with 200; what the line says about the model's serving path (optimization)
is kept with the replica. Its merged stdout/stderr is kept (bounded) while it runs and for the
last ``kept_logs`` replicas after it is gone, for the logs API and for start-failure reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from autoscaler.backend import GpuCapacity, ReplicaHealth, ReplicaStartError
from autoscaler.backends._process import ProcessOutput, kill, spawn, terminate
from autoscaler.backends._worker import DETACHED_ENV
from autoscaler.backends.warm_pool import WarmPool, needs_fresh_process
from autoscaler.probe import ReadinessProbe
from autoscaler.settings import LocalBackendSettings
from autoscaler.spec import EntitySpec
from autoscaler.types import EntityKey, ReplicaInfo, ReplicaOptimization
from runtime.config import MAX_UNIX_SOCKET_PATH
from runtime.devices import Accelerators
from runtime.devices import detect as detect_accelerators
from runtime.store.cache import pid_alive

logger = logging.getLogger("zeroserve.autoscaler.local")

# On a GPU a larger batch pays: the device's cost per call is flat over a wide range of batch sizes, so a
# short wait for more rows buys throughput (used where the spec leaves batching to the defaults).
GPU_MAX_BATCH_SIZE = 256
GPU_MAX_BATCH_DELAY_MS = 5.0


def gpu_batching(spec: EntitySpec) -> list[str]:
    """Runtime arguments that tune batching for a GPU, for what ``spec`` leaves unset."""
    batching = spec.batching
    if not batching.enabled:
        return []
    argv = []
    if batching.max_batch_size is None:
        argv += ["--max-batch-size", str(GPU_MAX_BATCH_SIZE)]
    if batching.max_batch_delay_ms is None:
        argv += ["--max-batch-delay-ms", f"{GPU_MAX_BATCH_DELAY_MS:g}"]
    return argv


def runtime_argv(spec: EntitySpec, host: str) -> list[str]:
    """The ``python -m runtime`` arguments for a replica of ``spec``."""
    argv = ["--model-uri", spec.model_uri, "--port", "0", "--host", host, "--name", spec.served_name,
            "--concurrency", str(spec.autoscaling.container_concurrency),
            "--drain-timeout", f"{spec.drain_timeout_s:g}",
            # Always explicit: the spec decides, not a ZEROSERVE_OPTIMIZATION the gateway happens to have.
            "--optimization", spec.optimization]
    if spec.model_version:
        argv += ["--model-version", spec.model_version]
    batching = spec.batching
    if not batching.enabled:
        argv.append("--no-batching")
    else:
        if batching.max_batch_size is not None:
            argv += ["--max-batch-size", str(batching.max_batch_size)]
        if batching.max_batch_delay_ms is not None:
            argv += ["--max-batch-delay-ms", f"{batching.max_batch_delay_ms:g}"]
    return argv


def announced_optimization(announced: object) -> ReplicaOptimization | None:
    """The ``optimization`` object of a ready line, or None when it is missing or malformed (an older
    runtime): the serving path is information, never a reason to refuse a replica."""
    if not isinstance(announced, dict):
        return None
    path, reason, mode = announced.get("path"), announced.get("reason"), announced.get("mode", "auto")
    if not (isinstance(path, str) and isinstance(reason, str) and isinstance(mode, str)):
        return None
    return ReplicaOptimization(path=path, reason=reason, mode=mode)


@dataclass(eq=False)
class _LocalReplica:
    replica_id: str
    entity: EntityKey
    process: asyncio.subprocess.Process
    output: ProcessOutput
    capacity: int
    from_pool: bool
    url: str | None = None
    optimization: ReplicaOptimization | None = None
    unix_socket: str | None = None  # as announced by the replica: it listens there too
    memory_limit_mib: int | None = None
    killed_for: str | None = None  # why this backend killed it, for the log line of its exit

    def info(self) -> ReplicaInfo:
        assert self.url is not None
        return ReplicaInfo(self.replica_id, self.entity, self.url, self.capacity, self.optimization,
                           self.unix_socket)


@dataclass(frozen=True, slots=True)
class _AdoptedReplica:
    info: ReplicaInfo
    pid: int | None


def resident_mib(pid: int) -> int | None:
    """A process's resident memory in MiB (Linux ``/proc``), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


async def terminate_pid(pid: int | None, timeout_s: float) -> None:
    """SIGTERM a process that is not our child (an adopted replica), SIGKILL it after ``timeout_s``."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while pid_alive(pid):
        if asyncio.get_running_loop().time() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return
        await asyncio.sleep(0.05)


SOCKET_DIR_PREFIX = "zeroserve-"
_SOCKET_DIR_NAME = re.compile(r"zeroserve-(\d+)-[^/]+")


def remove_stale_socket_dirs(parent: str) -> list[str]:
    """Remove the replica socket directories in ``parent`` left by backends whose process is gone (a gateway
    killed before it could close); returns the paths removed.

    Only this user's real directories named ``zeroserve-<pid>-...`` whose pid no longer runs are touched:
    another user's, a symlink, or one of a live process (even a reused pid) are left alone."""
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        match = _SOCKET_DIR_NAME.fullmatch(name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        path = os.path.join(parent, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.info("removed %d replica socket folder(s) left by stopped gateways", len(removed))
    return removed


def _still_private(folder: str) -> bool:
    """Whether the socket folder is still this user's private directory. Something outside may have
    removed it (a tmp cleaner; another gateway's stale-folder sweep across pid namespaces, where our pid
    means nothing): replicas are then started on TCP only rather than in a folder anyone could re-create."""
    try:
        info = os.lstat(folder)
    except OSError:
        info = None
    if (
        info is not None
        and stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and stat.S_IMODE(info.st_mode) & 0o077 == 0
    ):
        return True
    logger.warning("replica socket folder %s is gone or not private any more: replicas use TCP only", folder)
    return False


class LocalBackend:
    """Replicas as local processes, with a warm pool of ``warm_pool_size`` pre-imported workers."""

    keeps_replicas = False  # processes on one machine: the last gateway out stops them

    def __init__(
        self,
        settings: LocalBackendSettings | None = None,
        *,
        host: str | None = None,
        warm_pool_size: int | None = None,
        preload: tuple[str, ...] | None = None,
        environment: Mapping[str, str] | None = None,
        probe_timeout_s: float = 2.0,
        unix_sockets: bool | None = None,
        detached: bool = False,
    ) -> None:
        """Unset arguments come from ``settings`` (by default read from ``ZEROSERVE_*`` variables).

        ``detached``: replicas outlive this process (several gateways, one leading at a time: the next
        leader adopts them) instead of dying with it. They then listen on TCP only, since the socket
        folder is named after this process and swept once it is gone."""
        settings = settings or LocalBackendSettings()
        self._host = host if host is not None else settings.replica_host
        self._unix_sockets = settings.replica_unix_sockets if unix_sockets is None else unix_sockets
        self._unix_sockets = self._unix_sockets and not detached
        # Where replicas put their Unix sockets: a short private directory (socket paths are limited to
        # ~100 bytes), made on open and removed on close; its name carries this process's pid, so that
        # the directory of a gateway that died without closing can be recognised and removed later.
        self._socket_dir: str | None = None
        self._socket_ids = itertools.count(1)
        self._environment = dict(os.environ if environment is None else environment)
        if detached:
            self._environment[DETACHED_ENV] = "1"
        pool_size = warm_pool_size if warm_pool_size is not None else settings.warm_pool_size
        pool_preload = preload if preload is not None else settings.preload
        self._log_lines = settings.replica_log_lines
        self._pool = (WarmPool(pool_size, pool_preload, self._environment, self._log_lines)
                      if pool_size > 0 else None)
        self._kept_logs = settings.kept_replica_logs
        self._memory_limit_mib = settings.replica_memory_limit_mib
        # This machine's CUDA devices (asked of the driver once, at open) and which replica holds each:
        # one GPU per replica, as Kubernetes gives nvidia.com/gpu.
        self._accelerators: Accelerators | None = None
        self._gpu_of: dict[str, int] = {}  # replica id -> the GPU it holds
        self._memory_watch: asyncio.Task[None] | None = None
        self._replicas: dict[str, _LocalReplica] = {}
        # Replicas another gateway's backend started, taken over when this gateway began to lead.
        self._adopted: dict[str, _AdoptedReplica] = {}
        self._gone: OrderedDict[str, ProcessOutput] = OrderedDict()
        self._probe = ReadinessProbe(probe_timeout_s)
        # Model-cache counters announced by replicas when ready (hits, misses, bytes fetched), summed.
        self._cache_counters = [0, 0, 0]

    def cache_counters(self) -> tuple[int, int, int]:
        """Model-cache hits, misses and bytes fetched over every replica this backend started."""
        hits, misses, fetched = self._cache_counters
        return hits, misses, fetched

    @property
    def pool(self) -> WarmPool | None:
        return self._pool

    async def open(self) -> None:
        if self._accelerators is None:
            self._accelerators = await asyncio.to_thread(detect_accelerators)
        if self._unix_sockets and self._socket_dir is None:
            remove_stale_socket_dirs(tempfile.gettempdir())
            self._socket_dir = tempfile.mkdtemp(prefix=f"{SOCKET_DIR_PREFIX}{os.getpid()}-")  # mode 0700
        if not self._probe.opened:
            await self._probe.warm()
        if self._pool is not None:
            self._pool.start()
        if self._memory_watch is None and sys.platform == "linux":  # reads /proc
            self._memory_watch = asyncio.create_task(self._watch_memory(), name="replica memory limits")

    # --- the Backend protocol ---

    async def start_replica(self, entity: EntityKey, spec: EntitySpec, replica_id: str) -> ReplicaInfo:
        argv = runtime_argv(spec, self._host)
        if self._socket_dir is not None and not _still_private(self._socket_dir):
            # Forgotten for good: checked (and warned about) once, and never removed by close(), since
            # a folder by that name may be someone else's by now.
            self._socket_dir = None
        if self._socket_dir is not None:
            path = os.path.join(self._socket_dir, f"r{next(self._socket_ids)}.sock")
            if len(os.fsencode(path)) <= MAX_UNIX_SOCKET_PATH:  # else (a long TMPDIR) TCP only
                argv += ["--unix-socket", path]
        environment = dict(spec.environment_vars)
        gpu = self._claim_gpu(spec, replica_id)
        if gpu is not None:
            # The device is named before anything in the process initialises CUDA: a fresh process, never
            # a warm-pool worker that already imported its libraries.
            environment.update(CUDA_VISIBLE_DEVICES=str(gpu), ZEROSERVE_DEVICE="cuda")
            argv += gpu_batching(spec)
        worker = None
        if gpu is None and self._pool is not None and not needs_fresh_process(environment):
            worker = self._pool.take()
        if worker is not None:
            process, output = worker.process, worker.output
            output.note(f"--- warm pool worker {process.pid} becomes replica {replica_id} ---")
            worker.assign(argv, environment)
        else:
            try:
                process = await spawn(["--", *argv], {**self._environment, **environment})
            except BaseException:
                self._release_gpu(replica_id)
                raise
            assert process.stdout is not None
            output = ProcessOutput(process.stdout, self._log_lines)
        replica = _LocalReplica(replica_id, entity, process, output, spec.autoscaling.container_concurrency,
                                from_pool=worker is not None)
        limit = self._memory_limit_mib  # None: the workload size's; 0: none
        size_limit = spec.autoscaling.workload_size.memory_mib
        replica.memory_limit_mib = size_limit if limit is None else limit or None
        self._replicas[replica_id] = replica
        try:
            async with asyncio.timeout(spec.start_timeout_s):
                replica.url = await self._until_ready(replica)
            # Checked once more now: a model that does not fit never serves (the watcher samples slower
            # than a small model loads).
            if self._enforce_memory_limit(replica):
                raise ReplicaStartError(f"replica {replica_id} {replica.killed_for}", log_tail=output.tail())
        except BaseException as error:
            if self._pool is not None:
                self._pool.refill()
            await kill(process)
            await self._retire(replica)
            if isinstance(error, TimeoutError):
                message = f"replica {replica_id} was not ready within {spec.start_timeout_s:g} s"
                raise ReplicaStartError(message, log_tail=output.tail()) from None
            raise
        if self._pool is not None:
            self._pool.refill()
        logger.info("replica %s of %s ready at %s (pid %s, %s)", replica_id, entity, replica.url,
                    process.pid, "warm pool" if replica.from_pool else "new process")
        return replica.info()

    async def stop_replica(self, replica_id: str, timeout_s: float) -> None:
        adopted = self._adopted.pop(replica_id, None)
        if adopted is not None:
            await terminate_pid(adopted.pid, timeout_s + 1.0)
            return
        replica = self._replicas.get(replica_id)
        if replica is None:
            return
        # One extra second over the replica's own drain timeout: it exits by itself when it can.
        code = await terminate(replica.process, timeout_s + 1.0)
        replica.output.note(f"--- replica {replica_id} stopped (exit code {code}) ---")
        await self._retire(replica)

    async def health(self, replica_id: str) -> ReplicaHealth:
        adopted = self._adopted.get(replica_id)
        if adopted is not None:
            if adopted.pid is not None and not pid_alive(adopted.pid):
                del self._adopted[replica_id]
                return ReplicaHealth.EXITED
            return ReplicaHealth.HEALTHY if await self._probe(adopted.info.url) else ReplicaHealth.UNHEALTHY
        replica = self._replicas.get(replica_id)
        if replica is None:
            return ReplicaHealth.EXITED
        if replica.process.returncode is not None:
            why = f": {replica.killed_for}" if replica.killed_for else ""
            replica.output.note(f"--- replica {replica_id} exited unexpectedly "
                                f"(exit code {replica.process.returncode}){why} ---")
            await self._retire(replica)
            return ReplicaHealth.EXITED
        if replica.url is None:
            return ReplicaHealth.UNHEALTHY
        return ReplicaHealth.HEALTHY if await self._probe(replica.url) else ReplicaHealth.UNHEALTHY

    def list_replicas(self) -> list[ReplicaInfo]:
        started = [replica.info() for replica in self._replicas.values()
                   if replica.url is not None and replica.process.returncode is None]
        return started + [adopted.info for adopted in self._adopted.values()]

    def logs(self, replica_id: str) -> str:
        if replica_id in self._adopted:
            return (f"(replica {replica_id} was adopted from the gateway that led before; its output"
                    " went to that gateway)\n")
        replica = self._replicas.get(replica_id)
        output = replica.output if replica is not None else self._gone.get(replica_id)
        return output.text() if output is not None else ""

    async def close(self) -> None:
        if self._memory_watch is not None:
            self._memory_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._memory_watch
            self._memory_watch = None
        if self._pool is not None:
            await self._pool.close()
        replicas = list(self._replicas.values())
        adopted = list(self._adopted.values())
        self._adopted.clear()
        await asyncio.gather(*(terminate(r.process, 5.0) for r in replicas),
                             *(terminate_pid(a.pid, 5.0) for a in adopted), return_exceptions=True)
        for replica in replicas:
            await self._retire(replica)
        await self._probe.aclose()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    @property
    def accelerators(self) -> Accelerators:
        if self._accelerators is None:
            self._accelerators = detect_accelerators()
        return self._accelerators

    async def gpu_capacity(self) -> GpuCapacity:
        accelerators = self.accelerators
        return GpuCapacity(len(accelerators.gpus), f"this machine ({accelerators.describe()})")

    def _claim_gpu(self, spec: EntitySpec, replica_id: str) -> int | None:
        """A free GPU for a replica of a GPU workload type (None for CPU), held until it is retired."""
        if spec.workload_type == "CPU":
            return None
        gpus = self.accelerators.gpus
        if not gpus:
            raise ReplicaStartError(f"workload_type {spec.workload_type} needs a GPU, and this machine has "
                                    "no CUDA device")
        held = set(self._gpu_of.values())
        free = [gpu.index for gpu in gpus if gpu.index not in held]
        if not free:
            raise ReplicaStartError(f"no free GPU for replica {replica_id}: each of this machine's "
                                    f"{len(gpus)} GPU(s) serves a replica already (one GPU per replica)")
        self._gpu_of[replica_id] = free[0]
        return free[0]

    def _release_gpu(self, replica_id: str) -> None:
        self._gpu_of.pop(replica_id, None)

    async def _watch_memory(self, interval_s: float = 0.5) -> None:
        """Kill a replica whose resident memory passes its limit, as a container's OOM killer would: a
        model that leaks must not take the machine (and every other replica on it) down with it. The
        autoscaler sees it exit at its next health check and replaces it; its log says why."""
        while True:
            await asyncio.sleep(interval_s)
            for replica in list(self._replicas.values()):
                self._enforce_memory_limit(replica)

    def _enforce_memory_limit(self, replica: _LocalReplica) -> bool:
        """True (and the replica SIGKILLed, saying why) when it is over its limit."""
        limit = replica.memory_limit_mib
        if limit is None or replica.process.returncode is not None:
            return False
        if replica.killed_for:
            return True
        used = resident_mib(replica.process.pid)
        if used is None or used <= limit:
            return False
        replica.killed_for = f"killed for using {used:,} MiB of memory, over its limit of {limit:,} MiB"
        replica.output.note(f"--- replica {replica.replica_id} {replica.killed_for} ---")
        logger.warning("replica %s of %s %s", replica.replica_id, replica.entity, replica.killed_for)
        with contextlib.suppress(ProcessLookupError):
            replica.process.send_signal(signal.SIGKILL)
        return True

    # --- extras for tests and the CLI ---

    def pid(self, replica_id: str) -> int | None:
        adopted = self._adopted.get(replica_id)
        if adopted is not None:
            return adopted.pid
        replica = self._replicas.get(replica_id)
        return replica.process.pid if replica is not None else None

    # --- handing replicas over between gateways (HandoverBackend) ---

    async def adopt(self, replica: ReplicaInfo, pid: int | None) -> bool:
        if replica.replica_id in self._replicas or replica.replica_id in self._adopted:
            return True
        if pid is not None and not pid_alive(pid):
            return False
        if not await self._probe(replica.url):
            return False
        self._adopted[replica.replica_id] = _AdoptedReplica(replica, pid)
        logger.info("adopted replica %s of %s at %s (pid %s)", replica.replica_id, replica.entity,
                    replica.url, pid)
        return True

    async def discover(self) -> list[ReplicaInfo]:
        # Detached replicas are found through the fleet's registry (their gateway's database), and
        # attached ones die with their gateway: nothing to find on the machine itself.
        return []

    async def detach(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        for replica in list(self._replicas.values()):
            # Its output is not read any more; the replica carries on (its writes to the closed pipe
            # are dropped: autoscaler.backends._worker).
            await replica.output.aclose()
        self._replicas.clear()
        self._adopted.clear()
        await self._probe.aclose()

    def started_from_pool(self, replica_id: str) -> bool:
        replica = self._replicas.get(replica_id)
        return replica is not None and replica.from_pool

    # --- internals ---

    async def _until_ready(self, replica: _LocalReplica) -> str:
        exited = asyncio.create_task(replica.process.wait())
        try:
            waiting: set[asyncio.Future[object]] = {replica.output.ready, exited}  # type: ignore[arg-type]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        output = replica.output
        if output.ready.done() and not output.ready.cancelled():
            announced = output.ready.result()
            url = f"http://{self._url_host()}:{int(announced['port'])}"
            self._count_cache(announced.get("cache"))
            replica.optimization = announced_optimization(announced.get("optimization"))
            unix_socket = announced.get("unix_socket")
            replica.unix_socket = unix_socket if isinstance(unix_socket, str) else None
            await self._probe_until_ready(replica, url)
            return url
        code = await replica.process.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await output.closed.wait()
        last_line = replica.killed_for or next(
            (line for line in reversed(output.tail().splitlines()) if line.strip()), "")
        raise ReplicaStartError(f"replica {replica.replica_id} exited with code {code} before it was ready"
                                + (f": {last_line}" if last_line else ""), log_tail=output.tail())

    def _count_cache(self, cache: object) -> None:
        if isinstance(cache, dict):
            for index, name in enumerate(("hits", "misses", "bytes_fetched")):
                value = cache.get(name)
                if isinstance(value, int):
                    self._cache_counters[index] += value

    async def _probe_until_ready(self, replica: _LocalReplica, url: str) -> None:
        # The runtime announces readiness only once it listens, so this passes at the first try unless
        # something is badly wrong; it is here so that "ready" always means "answered the probe".
        delay = 0.01
        while not await self._probe(url):
            if replica.process.returncode is not None:
                raise ReplicaStartError(f"replica {replica.replica_id} exited right after announcing ready",
                                        log_tail=replica.output.tail())
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _url_host(self) -> str:
        if self._host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if self._host == "::":
            return "[::1]"
        return f"[{self._host}]" if ":" in self._host else self._host

    async def _retire(self, replica: _LocalReplica) -> None:
        if self._replicas.pop(replica.replica_id, None) is None:
            return
        self._release_gpu(replica.replica_id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await replica.output.closed.wait()
        self._gone[replica.replica_id] = replica.output
        while len(self._gone) > self._kept_logs:
            self._gone.popitem(last=False)
