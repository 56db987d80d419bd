"""The routes of observability: ``/metrics``, the dashboard and its JSON APIs.

The dashboard page and its two assets are public (``DASHBOARD_PUBLIC_PATHS``): they hold no data, and a
browser cannot attach a bearer token to a navigation. The page asks for a token once, keeps it in the
tab's ``sessionStorage`` and calls the JSON APIs with it, which answer only what the token may see:

- ``GET /api/2.0/zeroserve/overview``: the endpoints the caller may view, with state, replicas, the
  latest rates and cost;
- ``GET /api/2.0/zeroserve/timeseries/{name}?since=<unix seconds>``: the endpoint's ring buffer and its
  recent scaling decisions (``CAN_VIEW``; 404 for an endpoint the caller may not see).

``/metrics`` covers every endpoint, so it needs an admin token (Prometheus scrapes with one); with
``?scope=fleet`` it covers every gateway sharing the state, each sample labelled with its gateway;
``endpoint_metrics`` serves the per-endpoint text behind ``CAN_VIEW`` for the control plane's route.
Errors are raised as ``ZeroserveError`` and answered by the gateway's one exception handler.
"""

from __future__ import annotations

import math
from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from router.auth.access import authorize, require_admin
from router.auth.types import PermissionLevel
from router.errors import EndpointNotFound, PermissionDenied
from router.fleet.series import fleet_overview, merge_series
from router.observability._views import overview as overview_json
from router.observability._views import timeseries_json
from router.observability.cost import sum_costs
from router.observability.service import Observability
from runtime.errors import InvalidParameterValue, NotFound

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DASHBOARD_PATH = "/dashboard"
_ASSETS = {
    "/dashboard": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/dashboard/favicon.svg": ("favicon.svg", "image/svg+xml"),
    # Browsers ask for /favicon.ico on their own, without a token: answer it (401 read as a fault).
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),
}
DASHBOARD_PUBLIC_PATHS = frozenset(_ASSETS)

# The page loads nothing but its own assets and talks to nothing but this gateway.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _asset(name: str) -> bytes:
    return resources.files("router.static").joinpath(name).read_bytes()


def _can_view(request: Request, endpoint: str) -> bool:
    try:
        authorize(request, endpoint, PermissionLevel.CAN_VIEW)
    except (NotFound, PermissionDenied):
        return False
    return True


def dashboard_routes(observability: Observability) -> list[BaseRoute]:
    async def asset(request: Request) -> Response:
        name, media_type = _ASSETS[request.url.path]
        return Response(_asset(name), media_type=media_type, headers=_SECURITY_HEADERS)

    async def metrics(request: Request) -> Response:
        require_admin(request)
        scope = request.query_params.get("scope", "gateway")
        if scope not in ("gateway", "fleet"):
            raise InvalidParameterValue(f"scope must be gateway or fleet, got {scope!r}")
        if scope == "fleet" and observability.fleet_exposition is not None:
            return Response(await observability.fleet_exposition(), media_type=PROMETHEUS_CONTENT_TYPE)
        return Response(observability.hub.exposition(), media_type=PROMETHEUS_CONTENT_TYPE)

    async def overview(request: Request) -> Response:
        answer = overview_json(observability, lambda name: _can_view(request, name))
        if observability.fleet_peers is not None:
            # Several gateways: each answered its own share of the traffic and cost; show the sum.
            answer = fleet_overview(answer, await observability.fleet_peers({}))
        return JSONResponse(answer)

    async def timeseries(request: Request) -> Response:
        name = request.path_params["name"]
        authorize(request, name, PermissionLevel.CAN_VIEW)
        if name not in observability.known_endpoints():
            raise EndpointNotFound(name)
        raw_since = request.query_params.get("since")
        since = _since(raw_since)
        answer = timeseries_json(observability, name, since)
        if observability.fleet_peers is not None:
            params = {"endpoint": name}
            if raw_since and since is not None:
                params["since"] = raw_since
            peers = await observability.fleet_peers(params)
            answer["series"] = merge_series([answer["series"], *(peer["series"] for peer in peers)],
                                            observability.settings.resolution_s)
            answer["cost"] = sum_costs([answer["cost"], *(peer["cost"] for peer in peers)])
        return JSONResponse(answer)

    return [
        *(Route(path, asset, methods=["GET"]) for path in _ASSETS),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/api/2.0/zeroserve/overview", overview, methods=["GET"]),
        Route("/api/2.0/zeroserve/timeseries/{name}", timeseries, methods=["GET"]),
    ]


def endpoint_metrics(observability: Observability, request: Request, name: str) -> Response:
    """Prometheus text of one endpoint, for ``GET /api/2.0/serving-endpoints/{name}/metrics``."""
    authorize(request, name, PermissionLevel.CAN_VIEW)
    return Response(observability.hub.endpoint_exposition(name), media_type=PROMETHEUS_CONTENT_TYPE)


def _since(raw: str | None) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        since = float(raw)
    except ValueError:
        raise InvalidParameterValue(f"since must be a Unix time in seconds, got {raw!r}") from None
    if not math.isfinite(since) or since < 0:
        raise InvalidParameterValue(f"since must be a Unix time in seconds, got {raw!r}")
    return since
