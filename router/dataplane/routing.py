"""The routing table: which served entities each endpoint's traffic goes to, and its data-plane limits.

The control plane writes it (``set_endpoint`` / ``remove_endpoint``) whenever an endpoint's config
changes; the data plane reads it on every request. Entries are immutable snapshots replaced whole, so
a reader never sees half an update and the hot path takes no lock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from autoscaler.types import EntityKey
from router.errors import EndpointNotFound
from runtime.errors import InvalidParameterValue


@dataclass(frozen=True, slots=True)
class EndpointRouting:
    """Per-endpoint data-plane settings."""

    # How long a request may wait in the activator queue for a replica (scale from zero included).
    queue_timeout_s: float = 60.0
    # Requests held per served entity beyond which new ones get 429 at once.
    max_queue: int = 1024
    # How long a replica may take to answer one request before the client gets 504.
    upstream_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not (self.queue_timeout_s > 0 and math.isfinite(self.queue_timeout_s)):
            raise InvalidParameterValue(
                f"queue_timeout_s must be a positive number, got {self.queue_timeout_s}"
            )
        if self.max_queue < 0:
            raise InvalidParameterValue(f"max_queue must be >= 0, got {self.max_queue}")
        if not (self.upstream_timeout_s > 0 and math.isfinite(self.upstream_timeout_s)):
            raise InvalidParameterValue(
                f"upstream_timeout_s must be a positive number, got {self.upstream_timeout_s}"
            )


@dataclass(frozen=True, slots=True)
class Route:
    """A share of an endpoint's traffic: ``percent`` of requests go to ``entity``."""

    entity: EntityKey
    percent: int


@dataclass(frozen=True, slots=True)
class EndpointEntry:
    name: str
    routes: tuple[Route, ...]
    settings: EndpointRouting
    # Cumulative upper bounds of the routes with percent > 0, for the traffic split: routes (A 90, B 10)
    # give ((90, A), (100, B)); a draw d in [0, 100) goes to the first bound above it.
    cumulative: tuple[tuple[int, EntityKey], ...] = field(default=())
    # Served entities that receive a mirrored copy of traffic (shadow routing), with their percent.
    shadows: tuple[Route, ...] = field(default=())

    @property
    def entities(self) -> tuple[EntityKey, ...]:
        return tuple(route.entity for route in self.routes)


def _validate_routes(name: str, routes: Sequence[Route]) -> tuple[tuple[int, EntityKey], ...]:
    seen: set[EntityKey] = set()
    for route in routes:
        if route.entity.endpoint != name:
            raise InvalidParameterValue(f"route to {route.entity} does not belong to endpoint {name!r}")
        if route.entity in seen:
            raise InvalidParameterValue(f"served entity {route.entity.served_entity!r} is routed twice")
        seen.add(route.entity)
        if not 0 <= route.percent <= 100:
            raise InvalidParameterValue(
                f"traffic percentage for {route.entity.served_entity!r} must be within 0..100, "
                f"got {route.percent}"
            )
    total = sum(route.percent for route in routes)
    if routes and total != 100:
        raise InvalidParameterValue(f"traffic percentages of endpoint {name!r} sum to {total}, not 100")
    bound = 0
    cumulative: list[tuple[int, EntityKey]] = []
    for route in routes:
        if route.percent:
            bound += route.percent
            cumulative.append((bound, route.entity))
    return tuple(cumulative)


class RoutingTable:
    """Endpoint name -> immutable ``EndpointEntry``."""

    def __init__(self) -> None:
        self._endpoints: dict[str, EndpointEntry] = {}

    def set_endpoint(
        self,
        name: str,
        routes: Iterable[tuple[EntityKey, int]],
        settings: EndpointRouting | None = None,
        *,
        shadows: Iterable[tuple[EntityKey, int]] = (),
    ) -> EndpointEntry:
        """Replace the routes of endpoint ``name``; percentages must sum to 100 (or there are none,
        which makes the endpoint answer 503 until it has routes)."""
        route_list = tuple(Route(entity, int(percent)) for entity, percent in routes)
        cumulative = _validate_routes(name, route_list)
        shadow_list = tuple(Route(entity, int(percent)) for entity, percent in shadows)
        for shadow in shadow_list:
            if not 0 <= shadow.percent <= 100:
                raise InvalidParameterValue(f"shadow percentage must be within 0..100, got {shadow.percent}")
        entry = EndpointEntry(
            name=name,
            routes=route_list,
            settings=settings or EndpointRouting(),
            cumulative=cumulative,
            shadows=shadow_list,
        )
        self._endpoints[name] = entry
        return entry

    def remove_endpoint(self, name: str) -> None:
        self._endpoints.pop(name, None)

    def get(self, name: str) -> EndpointEntry | None:
        return self._endpoints.get(name)

    def lookup(self, name: str) -> EndpointEntry:
        entry = self._endpoints.get(name)
        if entry is None:
            raise EndpointNotFound(name)
        return entry

    def names(self) -> list[str]:
        return sorted(self._endpoints)

    def __contains__(self, name: object) -> bool:
        return name in self._endpoints

    def __len__(self) -> int:
        return len(self._endpoints)
