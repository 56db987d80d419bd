"""What the autoscaler loop needs from the world: a ``Backend`` that runs replicas and a ``Clock``.

Both are ``typing.Protocol``s so that the loop can be driven by hand-written fakes in tests
(``autoscaler.testing``) and by the real thing in production (``autoscaler.backends.local``, and a
Kubernetes backend that scales Deployments).
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from autoscaler.spec import EntitySpec
from autoscaler.types import EntityKey, ReplicaInfo
from runtime.errors import ModelLoadError


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds: every duration and deadline in the autoscaler is measured with this."""

    def wall(self) -> float:
        """Unix seconds, only to stamp records that people read (the decision history)."""

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ReplicaHealth(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # running but failing its readiness probe
    EXITED = "exited"  # the process is gone


class ReplicaStartError(ModelLoadError):
    """A replica could not start: the model failed to load, the process died, or it timed out."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class Backend(Protocol):
    """Starts and stops replicas. Every method is safe to call for a replica that is already gone."""

    async def open(self) -> None:
        """Get ready to start replicas (the local backend fills its warm pool here)."""
        ...

    async def start_replica(self, entity: EntityKey, spec: EntitySpec, replica_id: str) -> ReplicaInfo:
        """Start a replica and return once it passed its readiness probe (model loaded and warm).

        Raises ``ReplicaStartError`` (with the tail of the replica's log) when it cannot start within
        ``spec.start_timeout_s``. If cancelled, it must stop whatever it already started.
        """
        ...

    async def stop_replica(self, replica_id: str, timeout_s: float) -> None:
        """Ask the replica to exit (it finishes in-flight requests), kill it after ``timeout_s``."""
        ...

    async def health(self, replica_id: str) -> ReplicaHealth: ...

    def list_replicas(self) -> list[ReplicaInfo]:
        """The replicas this backend runs right now."""
        ...

    def logs(self, replica_id: str) -> str:
        """The replica's captured output (bounded), kept for a while after it is gone."""
        ...

    async def close(self) -> None:
        """Stop everything this backend started (replicas and any warm pool)."""
        ...


@dataclass(frozen=True, slots=True)
class GpuCapacity:
    """The GPUs a backend can place replicas on: ``gpus`` None when it cannot tell (then a GPU workload
    type is accepted and the backend's own start decides); ``where`` says what was asked, for messages."""

    gpus: int | None
    where: str


@runtime_checkable
class AcceleratedBackend(Protocol):
    """A backend that knows whether GPU workload types can be placed (one GPU per replica)."""

    async def gpu_capacity(self) -> GpuCapacity: ...


@runtime_checkable
class HandoverBackend(Protocol):
    """A backend whose replicas can outlive the process that started them, so that leadership moves
    between gateways without restarting what runs (the local backend with detached replicas; pods)."""

    # True when replicas are meant to outlive every gateway (pods: a gateway's restart, or the last one
    # stopping, leaves them running for the next to adopt); False when the last gateway out stops them.
    keeps_replicas: bool

    async def adopt(self, replica: ReplicaInfo, pid: int | None) -> bool:
        """Take charge of a replica another gateway's backend started; False when it is not running
        (then forget it)."""
        ...

    async def detach(self) -> None:
        """Let go of every replica without stopping it (another gateway adopts them); stop only what
        belongs to this process alone (a warm pool)."""
        ...

    async def discover(self) -> list[ReplicaInfo]:
        """The ready replicas this kind of backend runs that outlived whoever started them (pods), to
        adopt when a gateway starts; empty where nothing outlives its gateway (local processes)."""
        ...
