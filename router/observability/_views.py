"""The dashboard's JSON: the overview of endpoints and one endpoint's time series, read from
``Observability`` (what the routes in ``dashboard.py`` answer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from router.observability.metrics import ReplicaCounts
from router.observability.service import EndpointView, Observability
from router.observability.timeseries import FIELDS


def endpoint_overview(observability: Observability, view: EndpointView) -> dict[str, Any]:
    keys = observability.hub.entities(view.name) or view.keys()
    counts = [observability.replica_counts(key) for key in keys]
    last = (ring.last() if (ring := observability.timeseries.get(view.name)) is not None else None) or {}
    replicas = {
        "desired": sum(c.desired for c in counts), "starting": sum(c.starting for c in counts),
        "ready": sum(c.ready for c in counts), "draining": sum(c.draining for c in counts),
    }
    return {
        "name": view.name,
        "state": {"ready": "READY" if view.ready else "NOT_READY", "config_update": view.config_update},
        "replicas": replicas,
        "scaled_to_zero": sum(c.running for c in counts) == 0 and replicas["desired"] == 0,
        "requests_per_s": last.get("requests_per_s"),
        "p50_ms": last.get("p50_ms"),
        "p99_ms": last.get("p99_ms"),
        "error_rate": last.get("error_rate"),
        "cost": observability.endpoint_cost(view.name),
        "capture": observability.tables.config(view.name) is not None,
        "served_entities": [
            {"name": key.served_entity, "workload_type": observability.hub.workload_type(key),
             "replicas": vars_of(observability.replica_counts(key)), "cost": observability.entity_cost(key)}
            for key in keys
        ],
    }


def overview(observability: Observability, visible: Callable[[str], bool]) -> dict[str, Any]:
    views = observability.catalog.endpoint_views() if observability.catalog is not None else [
        EndpointView(name, ready=True) for name in observability.hub.endpoints()]
    return {
        "now_ms": int(observability.clock.wall() * 1000),
        "currency": observability.ledger.currency,
        "resolution_s": observability.settings.resolution_s,
        "endpoints": [endpoint_overview(observability, view) for view in views if visible(view.name)],
    }


def timeseries_json(observability: Observability, endpoint: str,
                    since: float | None = None) -> dict[str, Any]:
    ring = observability.timeseries.get(endpoint)
    series = ring.series(since) if ring is not None else {"t": [], **{name: [] for name in FIELDS}}
    events: list[dict[str, Any]] = []
    for key in observability.hub.entities(endpoint):
        status = observability.status(key)
        if status is None:
            continue
        events.extend({"timestamp_ms": record.at_unix_ms, "served_entity": key.served_entity,
                       "previous": record.from_replicas, "desired": record.to_replicas,
                       "reason": record.reason} for record in status.history)
    events.sort(key=lambda event: event["timestamp_ms"])
    shown = observability.settings.scaling_events_shown
    return {
        "endpoint": endpoint,
        "now": observability.clock.wall(),
        "resolution_s": observability.settings.resolution_s,
        "retention_s": observability.settings.retention_s,
        "series": series,
        "scaling_events": events[-shown:] if shown else [],
        "cost": observability.endpoint_cost(endpoint),
    }


def vars_of(counts: ReplicaCounts) -> dict[str, int]:
    return {"desired": counts.desired, "starting": counts.starting, "ready": counts.ready,
            "draining": counts.draining}
