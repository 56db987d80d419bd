from __future__ import annotations

import pytest

from router.api.lifecycle import ConfigUpdate, ResourceConflict, UpdateEvent, next_state

S = ConfigUpdate
E = UpdateEvent

ALLOWED = [
    (S.NOT_UPDATING, E.SUBMIT, S.IN_PROGRESS),
    (S.UPDATE_FAILED, E.SUBMIT, S.IN_PROGRESS),
    (S.UPDATE_CANCELED, E.SUBMIT, S.IN_PROGRESS),
    (S.IN_PROGRESS, E.SUCCEED, S.NOT_UPDATING),
    (S.IN_PROGRESS, E.FAIL, S.UPDATE_FAILED),
    (S.IN_PROGRESS, E.CANCEL, S.UPDATE_CANCELED),
]


@pytest.mark.parametrize(("state", "event", "expected"), ALLOWED, ids=lambda v: getattr(v, "value", v))
def test_allowed_transitions(state: ConfigUpdate, event: UpdateEvent, expected: ConfigUpdate) -> None:
    assert next_state(state, event) is expected


ILLEGAL = [
    (state, event)
    for state in ConfigUpdate
    for event in UpdateEvent
    if (state, event) not in {(s, e) for s, e, _ in ALLOWED}
]


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=lambda v: v.value)
def test_every_other_transition_is_a_conflict(state: ConfigUpdate, event: UpdateEvent) -> None:
    with pytest.raises(ResourceConflict) as info:
        next_state(state, event, "ep")
    assert info.value.status_code == 409
    assert "ep" in info.value.message


def test_second_update_while_one_runs_says_so() -> None:
    with pytest.raises(ResourceConflict, match="currently being updated"):
        next_state(S.IN_PROGRESS, E.SUBMIT, "ep")
