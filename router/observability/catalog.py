"""The control plane's endpoints as observability sees them (``EndpointCatalog`` over the store)."""

from __future__ import annotations

import dataclasses

from autoscaler.types import EntityKey
from router.api.views import EntityState, StateOf, endpoint_summary
from router.observability.service import EndpointView, EntityView, Observability
from router.state.endpoints import EndpointRecord, EndpointStore


class StoreCatalog:
    """Reads the endpoint store on each call: a few rows, and always current (no cache to go stale)."""

    def __init__(self, store: EndpointStore, state_of: StateOf) -> None:
        self._store = store
        self._state_of = state_of

    def endpoint_views(self) -> list[EndpointView]:
        return [self.view(record) for record in self._store.list_all()]

    def view(self, record: EndpointRecord) -> EndpointView:
        # The summary computes READY/NOT_READY exactly as the API shows it.
        state = endpoint_summary(record, self._state_of)["state"]
        entities: dict[str, EntityView] = {}
        for version in (record.config, record.pending):
            if version is not None:
                config = version.config
                for entity in config.served_entities:
                    entities.setdefault(entity.name, EntityView(entity.name, entity.workload_type,
                                                                config.traffic(entity.name)))
        # Capture follows the serving config (the pending one until there is one).
        serving = record.config or record.pending
        capture = serving.config.auto_capture_config if serving is not None else None
        return EndpointView(
            name=record.name,
            ready=state["ready"] == "READY",
            config_update=state["config_update"],
            entities=tuple(entities.values()),
            auto_capture_config=capture,
        )


def with_cost(state_of: StateOf, observability: Observability) -> StateOf:
    """``state_of`` with each served entity's ``cost`` extension filled in (for the API's views)."""

    def state_with_cost(key: EntityKey) -> EntityState | None:
        state = state_of(key)
        if state is None:
            return None
        return dataclasses.replace(state, cost=observability.entity_cost(key))

    return state_with_cost
