"""Types shared between the autoscaler, its backends and the router.

The router depends on the autoscaler (never the reverse), so the contract between them lives here:
the autoscaler tells a ``ReplicaListener`` (the router's activator) when replicas come and go, and the
router feeds concurrency reports back through ``Autoscaler.report``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


class EntityKey(NamedTuple):
    """One served entity: the unit that scales (an endpoint may split traffic over several)."""

    endpoint: str
    served_entity: str

    def __str__(self) -> str:
        return f"{self.endpoint}/{self.served_entity}"


class ReplicaState(enum.Enum):
    STARTING = "STARTING"
    READY = "READY"
    DRAINING = "DRAINING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class ReplicaOptimization:
    """Which path a replica serves its model by, as it announced when ready: ``"onnx"`` (a verified
    conversion, or a model that is ONNX already) or ``"native"`` (its own flavor), and why."""

    path: str
    reason: str
    mode: str = "auto"  # the optimization setting it ran under: auto, off or required


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """A replica as the router sees it: where to send requests and how many at once."""

    replica_id: str
    entity: EntityKey
    url: str  # base URL, e.g. "http://127.0.0.1:41234"
    capacity: int  # container concurrency C: never more than this many in flight to it
    # What the replica announced about its model's serving path; None when its backend cannot tell.
    # Not part of its identity: the router compares replicas by where they are.
    optimization: ReplicaOptimization | None = field(default=None, compare=False)
    # A Unix socket the replica also listens on, when it runs on the router's machine (local backend):
    # the router sends requests there rather than over loopback TCP (about half the system time per
    # request, on both ends). ``url`` stays its address for probes and for everything else.
    unix_socket: str | None = field(default=None, compare=False)


class ReplicaListener(Protocol):
    """Implemented by the router's activator; called by the autoscaler's backends."""

    def replica_ready(self, replica: ReplicaInfo) -> None:
        """The replica passed its readiness probe: requests may go to it (queued ones first)."""

    async def replica_draining(self, replica: ReplicaInfo) -> None:
        """Stop sending new requests to the replica; return once none are in flight to it."""

    def replica_gone(self, replica: ReplicaInfo) -> None:
        """The replica died or was stopped: forget it (in-flight requests to it fail or retry)."""

    def entity_failed(self, entity: EntityKey, reason: str) -> None:
        """The entity cannot start replicas: answer every waiter 503 with ``reason``."""
