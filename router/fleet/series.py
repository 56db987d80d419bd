"""The dashboard's numbers for the whole fleet: each gateway samples the requests it answered, so the
fleet's series is its gateways' series added up, point by point.

Points are matched by the sampling step they fall in (gateways sample on their own clocks, a step
apart at most). Per field: rates, levels of this gateway's own load and cost add up; replica counts are
the leader's view on every gateway, so the largest is taken; latency quantiles and error rates are
averaged weighted by each gateway's request rate — an approximation for quantiles (the exact fleet
quantile needs the histograms, which ``/metrics?scope=fleet`` has).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ADDED = ("requests_per_s", "in_flight", "queue_depth", "cold_starts", "cost", "cost_per_hour")
SHARED = ("replicas_desired", "replicas_ready", "replicas_starting")
WEIGHTED = ("p50_ms", "p99_ms", "error_rate", "client_error_rate")

Point = Mapping[str, float | None]


def merge_points(points: Sequence[Point]) -> dict[str, float | None]:
    """One point of the fleet from one point per gateway (the same step)."""
    merged: dict[str, float | None] = {}
    names = {name for point in points for name in point}
    for name in names:
        values = [point[name] for point in points if point.get(name) is not None]
        if not values:
            merged[name] = None
        elif name in WEIGHTED:
            pairs = [(point[name], point.get("requests_per_s") or 0.0) for point in points
                     if point.get(name) is not None]
            weight = sum(w for _, w in pairs)
            merged[name] = (sum(float(v) * w for v, w in pairs if v is not None) / weight if weight
                            else max(float(v) for v, _ in pairs if v is not None))
        elif name in SHARED or name == "t":
            merged[name] = max(float(value) for value in values if value is not None)
        else:
            merged[name] = sum(float(value) for value in values if value is not None)
    return merged


def merge_series(series: Sequence[Mapping[str, Sequence[float | None]]], step_s: float
                 ) -> dict[str, list[float | None]]:
    """``{"t": [...], field: [...]}`` of every gateway, as one series of the fleet."""
    steps: dict[int, list[dict[str, float | None]]] = {}
    fields: list[str] = []
    for one in series:
        for name in one:
            if name not in fields:
                fields.append(name)
        for index, timestamp in enumerate(one.get("t", [])):
            if timestamp is None:
                continue
            point = {name: values[index] for name, values in one.items()}
            steps.setdefault(round(float(timestamp) / step_s), []).append(point)
    merged: dict[str, list[float | None]] = {name: [] for name in fields or ["t"]}
    for step in sorted(steps):
        point = merge_points(steps[step])
        for name in merged:
            merged[name].append(point.get(name))
    return merged



def fleet_overview(own: dict[str, Any], peers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The dashboard's overview with every gateway's latest rates and cost added in. ``peers``: each
    other gateway's ``{"endpoints": {name: {"last": point, "cost": cost, "entities": {served: cost}}}}``."""
    from router.observability.cost import sum_costs

    rate_fields = ("requests_per_s", *WEIGHTED)
    endpoints = []
    for entry in own["endpoints"]:
        theirs = [peer["endpoints"][entry["name"]] for peer in peers
                  if entry["name"] in peer.get("endpoints", {})]
        points = [{name: entry.get(name) for name in rate_fields}]
        points += [{name: (t.get("last") or {}).get(name) for name in rate_fields} for t in theirs]
        rates = merge_points(points)
        entities = []
        for entity in entry["served_entities"]:
            costs = [entity["cost"], *(t["entities"][entity["name"]] for t in theirs
                                       if entity["name"] in t.get("entities", {}))]
            entities.append({**entity, "cost": sum_costs(costs)})
        endpoints.append({**entry, **{name: rates.get(name) for name in rate_fields},
                          "cost": sum_costs([entry["cost"], *(t["cost"] for t in theirs)]),
                          "served_entities": entities})
    return {**own, "endpoints": endpoints, "gateways": 1 + len(peers)}
