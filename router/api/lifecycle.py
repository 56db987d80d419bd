"""The lifecycle of an endpoint's config update, as a transition table (in the manner of h11's _state).

``state.config_update`` is what clients such as the Databricks SDK poll: a create or a ``PUT .../config``
submits a pending config (``IN_PROGRESS``); the rollout then succeeds (``NOT_UPDATING``, the pending
config became the config), fails (``UPDATE_FAILED``, the previous config keeps serving) or is canceled
(``UPDATE_CANCELED``, the endpoint was deleted mid-rollout). An illegal transition raises and changes
nothing; the only one a client can provoke is a second update while one is in progress (409).
"""

from __future__ import annotations

import enum

from runtime.errors import ZeroserveError


class ConfigUpdate(enum.Enum):
    NOT_UPDATING = "NOT_UPDATING"
    IN_PROGRESS = "IN_PROGRESS"
    UPDATE_FAILED = "UPDATE_FAILED"
    UPDATE_CANCELED = "UPDATE_CANCELED"


class UpdateEvent(enum.Enum):
    SUBMIT = "SUBMIT"
    SUCCEED = "SUCCEED"
    FAIL = "FAIL"
    CANCEL = "CANCEL"


class ResourceConflict(ZeroserveError):
    status_code = 409
    error_code = "RESOURCE_CONFLICT"


_TRANSITIONS: dict[tuple[ConfigUpdate, UpdateEvent], ConfigUpdate] = {
    (ConfigUpdate.NOT_UPDATING, UpdateEvent.SUBMIT): ConfigUpdate.IN_PROGRESS,
    (ConfigUpdate.UPDATE_FAILED, UpdateEvent.SUBMIT): ConfigUpdate.IN_PROGRESS,
    (ConfigUpdate.UPDATE_CANCELED, UpdateEvent.SUBMIT): ConfigUpdate.IN_PROGRESS,
    (ConfigUpdate.IN_PROGRESS, UpdateEvent.SUCCEED): ConfigUpdate.NOT_UPDATING,
    (ConfigUpdate.IN_PROGRESS, UpdateEvent.FAIL): ConfigUpdate.UPDATE_FAILED,
    (ConfigUpdate.IN_PROGRESS, UpdateEvent.CANCEL): ConfigUpdate.UPDATE_CANCELED,
}


def next_state(current: ConfigUpdate, event: UpdateEvent, endpoint: str = "") -> ConfigUpdate:
    """The state after ``event``; raises ``ResourceConflict`` for an event the state does not allow."""
    try:
        return _TRANSITIONS[(current, event)]
    except KeyError:
        if event is UpdateEvent.SUBMIT:
            raise ResourceConflict(
                f"Endpoint '{endpoint}' is currently being updated; wait until its config update is done."
            ) from None
        raise ResourceConflict(
            f"Endpoint '{endpoint}': cannot {event.value.lower()} a config update in state {current.value}"
        ) from None


class Deployment(enum.Enum):
    """``state.deployment`` of a served entity."""

    CREATING = "DEPLOYMENT_CREATING"
    READY = "DEPLOYMENT_READY"
    FAILED = "DEPLOYMENT_FAILED"
    ABORTED = "DEPLOYMENT_ABORTED"
    RECOVERING = "DEPLOYMENT_RECOVERING"
