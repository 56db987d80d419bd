"""Replica lifecycle as a transition table, and the served entity's deployment state derived from it.

Written like h11's ``_state.py``: every legal (state, event) pair is in one table; anything else raises
``IllegalTransition`` and changes nothing, so a bug in the loop shows up as an error at the point it
happens instead of as a replica the router and the autoscaler disagree about.

    STARTING --probe_ok--> READY --drain--> DRAINING --stopped--> STOPPED
    STARTING --start_failed / exited--> FAILED       STARTING --stopped--> STOPPED (start cancelled)
    READY --exited--> FAILED (crash)                 DRAINING --exited--> STOPPED (it exited on its own)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from autoscaler.types import ReplicaState


class ReplicaEvent(enum.Enum):
    PROBE_OK = "probe_ok"  # the readiness probe passed: the model is loaded and warm
    START_FAILED = "start_failed"  # the process could not load the model or timed out starting
    DRAIN = "drain"  # scale-down or rollout chose it: no new requests, finish in-flight ones
    STOPPED = "stopped"  # the backend stopped it on purpose (after draining, or a cancelled start)
    EXITED = "exited"  # the process went away without being asked to (crash, OOM, SIGKILL)


_TRANSITIONS: dict[tuple[ReplicaState, ReplicaEvent], ReplicaState] = {
    (ReplicaState.STARTING, ReplicaEvent.PROBE_OK): ReplicaState.READY,
    (ReplicaState.STARTING, ReplicaEvent.START_FAILED): ReplicaState.FAILED,
    (ReplicaState.STARTING, ReplicaEvent.EXITED): ReplicaState.FAILED,
    (ReplicaState.STARTING, ReplicaEvent.STOPPED): ReplicaState.STOPPED,
    (ReplicaState.READY, ReplicaEvent.DRAIN): ReplicaState.DRAINING,
    (ReplicaState.READY, ReplicaEvent.EXITED): ReplicaState.FAILED,
    (ReplicaState.DRAINING, ReplicaEvent.STOPPED): ReplicaState.STOPPED,
    # SIGTERM during the drain is the normal way out; exiting early is not a failure.
    (ReplicaState.DRAINING, ReplicaEvent.EXITED): ReplicaState.STOPPED,
}

TERMINAL_STATES = frozenset({ReplicaState.STOPPED, ReplicaState.FAILED})


class IllegalTransition(RuntimeError):
    def __init__(self, replica_id: str, state: ReplicaState, event: ReplicaEvent) -> None:
        super().__init__(f"replica {replica_id}: cannot {event.value} while {state.value}")
        self.state = state
        self.event = event


class ReplicaLifecycle:
    """The state of one replica; only ``handle`` changes it."""

    __slots__ = ("replica_id", "state")

    def __init__(self, replica_id: str, state: ReplicaState = ReplicaState.STARTING) -> None:
        self.replica_id = replica_id
        self.state = state

    def handle(self, event: ReplicaEvent) -> ReplicaState:
        next_state = _TRANSITIONS.get((self.state, event))
        if next_state is None:
            raise IllegalTransition(self.replica_id, self.state, event)
        self.state = next_state
        return next_state

    def can(self, event: ReplicaEvent) -> bool:
        return (self.state, event) in _TRANSITIONS

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def __repr__(self) -> str:
        return f"<ReplicaLifecycle {self.replica_id} {self.state.value}>"


class DeploymentState(enum.Enum):
    """A served entity's ``state.deployment`` in the Databricks API."""

    CREATING = "DEPLOYMENT_CREATING"
    READY = "DEPLOYMENT_READY"
    FAILED = "DEPLOYMENT_FAILED"
    ABORTED = "DEPLOYMENT_ABORTED"
    RECOVERING = "DEPLOYMENT_RECOVERING"


@dataclass(frozen=True, slots=True)
class DeploymentFacts:
    """What the loop knows about an entity's current config, enough to name its deployment state."""

    desired: int
    ready: int
    starting: int
    ever_ready: bool  # a replica of the current config has passed its readiness probe
    failed_reason: str | None
    removed: bool = False


def deployment_state(facts: DeploymentFacts) -> DeploymentState:
    """Derived, never stored, so it cannot drift from the replicas it describes."""
    if facts.removed:
        return DeploymentState.ABORTED
    if facts.failed_reason is not None:
        return DeploymentState.FAILED
    if facts.ready > 0:
        return DeploymentState.READY
    if facts.desired == 0 and facts.starting == 0:
        # Scaled to zero (or not yet asked for anything): ready to take a request, which starts one.
        return DeploymentState.READY
    # Replicas are wanted but none is ready: the first start of this config, or a replacement.
    return DeploymentState.RECOVERING if facts.ever_ready else DeploymentState.CREATING
