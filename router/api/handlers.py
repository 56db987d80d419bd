"""The serving-endpoints REST API (``/api/2.0/serving-endpoints``), as Starlette routes.

Handlers parse, ask the controller or the store, and render through ``views``; errors are raised as
``ZeroserveError`` and answered by the gateway's one exception handler. Each handler knows its caller
from ``scope["zeroserve.principal"]`` (None when auth is disabled) and asks ``Access`` before acting, so
the front door decides who may see, query or manage which endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from autoscaler.types import EntityKey
from router.api.controller import EndpointController
from router.api.models import PatchTagsInput, parse_body
from router.api.openapi import endpoint_openapi
from router.api.views import StateOf, endpoint_detailed, endpoint_summary
from router.auth.limits import loads_json
from router.state.endpoints import EndpointRecord
from runtime.errors import InvalidInput, InvalidParameterValue, NotFound

PRINCIPAL_SCOPE_KEY = "zeroserve.principal"
PREFIX = "/api/2.0/serving-endpoints"


class Access(Protocol):
    """Permission checks (``router.auth.access.FrontDoorAccess``, over the front door's authorizer)."""

    def check(self, principal: Any, endpoint: str, level: str) -> None:
        """Raise ``NotFound`` if the caller may not see the endpoint, ``PermissionDenied`` if it may not
        act on it at ``level`` (``CAN_VIEW``, ``CAN_QUERY``, ``CAN_MANAGE``)."""

    def visible(self, principal: Any, records: list[EndpointRecord]) -> list[EndpointRecord]: ...


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@dataclass
class ControlPlane:
    controller: EndpointController
    state_of: StateOf
    # Coroutines: on a gateway that does not lead, the logs are fetched from the one that does.
    logs_of: Callable[[EntityKey], Awaitable[str]]
    build_logs_of: Callable[[EntityKey], Awaitable[str]]
    metrics_of: Callable[[str], bytes]
    access: Access

    @property
    def store(self) -> Any:
        return self.controller.store

    # ---- handlers ----------------------------------------------------------------------------

    async def list_endpoints(self, request: Request) -> Response:
        """List serving endpoints the caller may see."""
        records = self.access.visible(_principal(request), self.store.list_all())
        return JSONResponse({"endpoints": [endpoint_summary(r, self.state_of) for r in records]})

    async def create_endpoint(self, request: Request) -> Response:
        """Create a serving endpoint; its first config rolls out in the background (poll the state)."""
        principal = _principal(request)
        record = await self.controller.create(await _json(request), _principal_name(principal))
        return JSONResponse(self._detailed(record, request))

    async def get_endpoint(self, request: Request) -> Response:
        """Get a serving endpoint: config, pending config, state of every served entity."""
        name = self._check(request, "CAN_VIEW")
        record = self.store.get(name)
        return JSONResponse(self._detailed(record, request))

    async def delete_endpoint(self, request: Request) -> Response:
        """Delete a serving endpoint; its replicas drain and stop."""
        name = self._check(request, "CAN_MANAGE")
        await self.controller.delete(name, _principal_name(_principal(request)))
        return JSONResponse({})

    async def update_config(self, request: Request) -> Response:
        """Update an endpoint's served entities and traffic (zero-downtime; 409 while an update runs)."""
        name = self._check(request, "CAN_MANAGE")
        body = await _json(request)
        record = await self.controller.update_config(name, body, _principal_name(_principal(request)))
        return JSONResponse(self._detailed(record, request))

    async def patch_tags(self, request: Request) -> Response:
        """Add and delete tags of an endpoint."""
        name = self._check(request, "CAN_MANAGE")
        patch = parse_body(PatchTagsInput, await _json(request))
        tags = self.store.patch_tags(
            name,
            {tag.key: tag.value for tag in patch.add_tags},
            patch.delete_tags,
            _principal_name(_principal(request)),
        )
        return JSONResponse({"tags": [_tag(k, v) for k, v in sorted(tags.items())]})

    async def metrics(self, request: Request) -> Response:
        """Prometheus metrics of one endpoint."""
        name = self._check(request, "CAN_VIEW")
        self.store.get(name)
        return Response(self.metrics_of(name), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def logs(self, request: Request) -> Response:
        """Recent logs of a served entity's replicas."""
        key = self._entity(request)
        return JSONResponse({"logs": await self.logs_of(key)})

    async def build_logs(self, request: Request) -> Response:
        """How a served entity's replicas were brought up: model fetch, load and warm-up."""
        key = self._entity(request)
        return JSONResponse({"logs": await self.build_logs_of(key)})

    async def openapi(self, request: Request) -> Response:
        """OpenAPI document for querying this endpoint."""
        name = self._check(request, "CAN_VIEW")
        record = self.store.get(name)
        return JSONResponse(endpoint_openapi(record, _base_url(request)))

    async def events(self, request: Request) -> Response:
        """zeroserve extension: the endpoint's history (creates, updates, failures) and scaling reasons."""
        name = self._check(request, "CAN_VIEW")
        self.store.get(name)
        limit = _int_param(request, "limit", 50)
        events = [
            {"timestamp": e.ts_ms, "kind": e.kind, "message": e.message, "principal": e.principal}
            for e in self.store.history(name, limit)
        ]
        return JSONResponse({"events": events})

    def routes(self) -> list[BaseRoute]:
        one = PREFIX + "/{name}"
        served = one + "/served-models/{served}"
        return [
            Route(PREFIX, self.list_endpoints, methods=["GET"]),
            Route(PREFIX, self.create_endpoint, methods=["POST"]),
            Route(one, self.get_endpoint, methods=["GET"]),
            Route(one, self.delete_endpoint, methods=["DELETE"]),
            Route(one + "/config", self.update_config, methods=["PUT"]),
            Route(one + "/tags", self.patch_tags, methods=["PATCH"]),
            Route(one + "/metrics", self.metrics, methods=["GET"]),
            Route(one + "/openapi", self.openapi, methods=["GET"]),
            Route(one + "/events", self.events, methods=["GET"]),
            Route(served + "/logs", self.logs, methods=["GET"]),
            Route(served + "/build-logs", self.build_logs, methods=["GET"]),
        ]

    # ---- helpers -----------------------------------------------------------------------------

    def _detailed(self, record: EndpointRecord, request: Request) -> dict[str, Any]:
        body = endpoint_detailed(record, self.state_of, _base_url(request))
        suggestions = self.controller.suggestions.get(record.name)
        if suggestions:
            body["suggestions"] = suggestions  # zeroserve's: e.g. that a GPU would serve it better
        return body

    def _check(self, request: Request, level: str) -> str:
        name: str = request.path_params["name"]
        self.access.check(_principal(request), name, level)
        return name

    def _entity(self, request: Request) -> EntityKey:
        name = self._check(request, "CAN_VIEW")
        served: str = request.path_params["served"]
        record = self.store.get(name)
        versions = [v for v in (record.config, record.pending) if v is not None]
        known = {e.name for v in versions for e in v.config.served_entities}
        if served not in known:
            raise NotFound(f"Served entity '{served}' does not exist in endpoint '{name}'.")
        return EntityKey(name, served)


def _principal(request: Request) -> Any:
    return request.scope.get(PRINCIPAL_SCOPE_KEY)


def _principal_name(principal: Any) -> str | None:
    return getattr(principal, "name", None)


async def _json(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise InvalidParameterValue("request body is required (a JSON object)")
    try:
        # Bounded nesting and strict UTF-8, the same parse the front door uses for every body.
        return loads_json(raw)
    except InvalidInput as exc:
        raise InvalidParameterValue(exc.message) from None


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _tag(key: str, value: str | None) -> dict[str, str]:
    return {"key": key, "value": value} if value is not None else {"key": key}


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidParameterValue(f"query parameter {name} must be an integer, got {raw!r}") from None
    if not 1 <= value <= 1000:
        raise InvalidParameterValue(f"query parameter {name} must be within 1..1000, got {value}")
    return value
