"""The control plane's endpoints as observability sees them (``EndpointCatalog`` over the store)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.api.views import StateOf, endpoint_summary
from router.observability.service import EndpointView, EntityView
from router.state import EndpointRecord, EndpointStore


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
        capture: Mapping[str, Any] | None = None
        for version in (record.config, record.pending):
            if version is None:
                continue
            config = version.config
            for entity in config.served_entities:
                entities.setdefault(entity.name, EntityView(entity.name, entity.workload_type,
                                                            config.traffic(entity.name)))
            if capture is None:
                capture = getattr(config, "auto_capture_config", None)
        return EndpointView(
            name=record.name,
            ready=state["ready"] == "READY",
            config_update=state["config_update"],
            entities=tuple(entities.values()),
            auto_capture_config=capture,
        )
