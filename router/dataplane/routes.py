"""The data plane's routes, described once.

Every way into the data plane is derived from ``DATAPLANE_ROUTES``: the Starlette routes of the ASGI
stack (``plane.dataplane_routes``: dispatch, 405s, the OpenAPI document), the permission and rate-limit
checks of the front door's one admission step (``auth.admission``, through a ``RouteMatcher`` of the routes
that name an endpoint), and the matcher of the query path below ASGI (``RouteMatcher.queries()``, used by
``plane.QueryFastPath`` and ``queries``). A new route, or a new permission or limit on one, is a line here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from router.auth.types import PermissionLevel


class Kind(enum.Enum):
    QUERY = "query"  # forwarded to a replica; body limit, rate limits and the request deadline apply
    MODEL_METADATA = "model metadata"  # forwarded; the answer names the endpoint's model
    MODEL_READY = "model ready"  # answered from the routing state (is a replica ready?)
    SERVER_METADATA = "server metadata"
    SERVER_LIVE = "server live"
    SERVER_READY = "server ready"


Protocol = Literal["mlflow", "oip"]  # which error shape and clients: MLflow scoring or OIP v2


@dataclass(frozen=True, slots=True)
class DataPlaneRoute:
    method: str
    path: str  # a Starlette path template; ``{name}`` is the serving endpoint
    kind: Kind
    protocol: Protocol
    # The permission on the endpoint named by ``{name}``; None for server-level routes (any token).
    level: PermissionLevel | None
    # Where a forwarded request goes on the replica: "invocations", "infer" or "metadata".
    upstream: Literal["invocations", "infer", "metadata"] | None = None

    @property
    def query(self) -> bool:
        return self.kind is Kind.QUERY


_VIEW, _QUERY = PermissionLevel.CAN_VIEW, PermissionLevel.CAN_QUERY
_MODEL = "/v2/models/{name}"
_VERSION = _MODEL + "/versions/{version}"

DATAPLANE_ROUTES: tuple[DataPlaneRoute, ...] = (
    DataPlaneRoute("POST", "/serving-endpoints/{name}/invocations", Kind.QUERY, "mlflow", _QUERY,
                   "invocations"),
    DataPlaneRoute("GET", "/v2", Kind.SERVER_METADATA, "oip", None),
    DataPlaneRoute("GET", "/v2/health/live", Kind.SERVER_LIVE, "oip", None),
    DataPlaneRoute("GET", "/v2/health/ready", Kind.SERVER_READY, "oip", None),
    DataPlaneRoute("GET", _MODEL, Kind.MODEL_METADATA, "oip", _VIEW, "metadata"),
    DataPlaneRoute("GET", _VERSION, Kind.MODEL_METADATA, "oip", _VIEW, "metadata"),
    DataPlaneRoute("GET", _MODEL + "/ready", Kind.MODEL_READY, "oip", _VIEW),
    DataPlaneRoute("GET", _VERSION + "/ready", Kind.MODEL_READY, "oip", _VIEW),
    DataPlaneRoute("POST", _MODEL + "/infer", Kind.QUERY, "oip", _QUERY, "infer"),
    DataPlaneRoute("POST", _VERSION + "/infer", Kind.QUERY, "oip", _QUERY, "infer"),
)


class _Pattern:
    """A template as prefix, middle segments and suffix, matched with string operations (the query
    path's matcher costs a few hundred nanoseconds a request, not a regular expression's microsecond)."""

    __slots__ = ("_end", "_start", "middle", "prefix", "route", "single", "suffix")

    def __init__(self, route: DataPlaneRoute) -> None:
        segments = route.path.split("/")
        params = [index for index, segment in enumerate(segments) if segment.startswith("{")]
        if not params:
            raise ValueError(f"{route.path}: only templates with a parameter are matched here")
        first, last = params[0], params[-1]
        self.route = route
        self.prefix = "/".join(segments[:first]) + "/"
        rest = segments[last + 1:]
        self.suffix = "/" + "/".join(rest) if rest else ""  # "" when the template ends in a parameter
        self.middle = tuple(segments[first:last + 1])  # literal segments, or "{param}"
        # The common case, one parameter between prefix and suffix: no split needed.
        self.single = self.middle[0][1:-1] if len(self.middle) == 1 else None
        self._start, self._end = len(self.prefix), len(self.suffix)

    def match(self, path: str) -> dict[str, str] | None:
        if not (path.startswith(self.prefix) and path.endswith(self.suffix)):
            return None
        inner = path[self._start: len(path) - self._end]
        if self.single is not None:
            return {self.single: inner} if inner and "/" not in inner else None
        parts = inner.split("/")
        if len(parts) != len(self.middle):
            return None
        params: dict[str, str] = {}
        for part, segment in zip(parts, self.middle, strict=True):
            if segment.startswith("{"):
                if not part:
                    return None
                params[segment[1:-1]] = part
            elif part != segment:
                return None
        return params


class RouteMatcher:
    """Matches ``method path`` against some routes of the table (those ``select`` keeps): (route, path
    params) or None, as Starlette's routing would (tests/router/dataplane/test_routes.py checks)."""

    def __init__(
        self, select: Callable[[DataPlaneRoute], bool], routes: tuple[DataPlaneRoute, ...] = DATAPLANE_ROUTES
    ) -> None:
        by_method: dict[str, list[_Pattern]] = {}
        for route in routes:
            if select(route):
                by_method.setdefault(route.method, []).append(_Pattern(route))
        self._by_method = {method: tuple(patterns) for method, patterns in by_method.items()}

    @classmethod
    def queries(cls) -> RouteMatcher:
        """The query routes: what the query path below ASGI serves."""
        return cls(lambda route: route.query)

    @classmethod
    def guarded(cls) -> RouteMatcher:
        """The routes that name an endpoint: where admission checks a permission (and rate limits)."""
        return cls(lambda route: route.level is not None)

    def match(self, method: str, path: str) -> tuple[DataPlaneRoute, dict[str, str]] | None:
        for pattern in self._by_method.get(method, ()):
            params = pattern.match(path)
            if params is not None:
                return pattern.route, params
        return None
