from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from autoscaler.lifecycle import (
    DeploymentFacts,
    DeploymentState,
    IllegalTransition,
    ReplicaEvent,
    ReplicaLifecycle,
    deployment_state,
)
from autoscaler.types import ReplicaState

E = ReplicaEvent
S = ReplicaState


@dataclass(frozen=True)
class Journey:
    id: str
    events: Sequence[ReplicaEvent]
    states: Sequence[ReplicaState]  # the state after each event


JOURNEYS = [
    Journey("start-serve-drain-stop", [E.PROBE_OK, E.DRAIN, E.STOPPED], [S.READY, S.DRAINING, S.STOPPED]),
    Journey("model-fails-to-load", [E.START_FAILED], [S.FAILED]),
    Journey("dies-while-starting", [E.EXITED], [S.FAILED]),
    Journey("start-cancelled-by-scale-down", [E.STOPPED], [S.STOPPED]),
    Journey("crash-while-serving", [E.PROBE_OK, E.EXITED], [S.READY, S.FAILED]),
    Journey("exits-on-its-own-while-draining", [E.PROBE_OK, E.DRAIN, E.EXITED],
            [S.READY, S.DRAINING, S.STOPPED]),
]


@pytest.mark.parametrize("journey", JOURNEYS, ids=lambda journey: journey.id)
def test_legal_journeys(journey: Journey) -> None:
    replica = ReplicaLifecycle("r1")
    assert replica.state is S.STARTING
    for event, expected in zip(journey.events, journey.states, strict=True):
        assert replica.can(event)
        assert replica.handle(event) is expected
        assert replica.state is expected
    assert replica.terminal is (journey.states[-1] in (S.STOPPED, S.FAILED))


ILLEGAL = [
    (S.STARTING, E.DRAIN),  # a replica that never served has nothing to drain: stop it instead
    (S.READY, E.PROBE_OK),
    (S.READY, E.START_FAILED),
    (S.READY, E.STOPPED),  # never stop a serving replica without draining it first
    (S.DRAINING, E.PROBE_OK),
    (S.DRAINING, E.DRAIN),
    (S.DRAINING, E.START_FAILED),
    *[(terminal, event) for terminal in (S.STOPPED, S.FAILED) for event in ReplicaEvent],
]


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=lambda v: v.value)
def test_illegal_transition_raises_and_changes_nothing(state: ReplicaState, event: ReplicaEvent) -> None:
    replica = ReplicaLifecycle("r9", state)
    assert not replica.can(event)
    with pytest.raises(IllegalTransition, match=f"replica r9: cannot {event.value} while {state.value}"):
        replica.handle(event)
    assert replica.state is state


def test_every_pair_is_either_legal_or_raises() -> None:
    legal = 0
    for state in ReplicaState:
        for event in ReplicaEvent:
            replica = ReplicaLifecycle("r", state)
            if replica.can(event):
                replica.handle(event)
                legal += 1
            else:
                with pytest.raises(IllegalTransition):
                    replica.handle(event)
    assert legal == 8
    assert repr(ReplicaLifecycle("r2")) == "<ReplicaLifecycle r2 STARTING>"


@dataclass(frozen=True)
class DeploymentCase:
    id: str
    facts: DeploymentFacts
    want: DeploymentState


DEPLOYMENT_CASES = [
    DeploymentCase("first-replica-starting", DeploymentFacts(1, 0, 1, ever_ready=False, failed_reason=None),
                   DeploymentState.CREATING),
    DeploymentCase("one-ready", DeploymentFacts(3, 1, 2, ever_ready=True, failed_reason=None),
                   DeploymentState.READY),
    DeploymentCase("scaled-to-zero", DeploymentFacts(0, 0, 0, ever_ready=True, failed_reason=None),
                   DeploymentState.READY),
    DeploymentCase("new-at-zero", DeploymentFacts(0, 0, 0, ever_ready=False, failed_reason=None),
                   DeploymentState.READY),
    DeploymentCase("replacing-a-crashed-one", DeploymentFacts(1, 0, 1, ever_ready=True, failed_reason=None),
                   DeploymentState.RECOVERING),
    DeploymentCase("crashed-and-waiting-for-backoff",
                   DeploymentFacts(1, 0, 0, ever_ready=True, failed_reason=None), DeploymentState.RECOVERING),
    DeploymentCase("failed-wins", DeploymentFacts(1, 1, 0, ever_ready=True, failed_reason="boom"),
                   DeploymentState.FAILED),
    DeploymentCase("removed", DeploymentFacts(0, 0, 0, ever_ready=True, failed_reason=None, removed=True),
                   DeploymentState.ABORTED),
]


@pytest.mark.parametrize("case", DEPLOYMENT_CASES, ids=lambda case: case.id)
def test_deployment_state(case: DeploymentCase) -> None:
    assert deployment_state(case.facts) is case.want
