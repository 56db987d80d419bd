"""The front door's REST routes: tokens and audit (admin only), the caller's identity, endpoint
permissions (the Databricks permissions API, so ``WorkspaceClient().serving_endpoints.get_permissions``
and friends work unmodified), and the per-endpoint rate-limit and AI-gateway settings.

Handlers raise ``ZeroserveError``s; the gateway's one exception handler answers them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from router.auth.access import principal_of, require_admin
from router.auth.limits import loads_json
from router.auth.permissions import AclEntry, parse_access_control_list
from router.auth.ratelimit import parse_rate_limits
from router.auth.types import EndpointRef, PermissionLevel
from router.errors import EndpointNotFound
from runtime.errors import InvalidParameterValue

if TYPE_CHECKING:
    from router.auth.frontdoor import FrontDoor
    from router.state.endpoints import EndpointStore

TOKENS = "/api/2.0/zeroserve/tokens"
PERMISSIONS = "/api/2.0/permissions/serving-endpoints/{endpoint_id}"
ENDPOINT = "/api/2.0/serving-endpoints/{name}"
LEVEL_DESCRIPTIONS = {
    PermissionLevel.CAN_VIEW: "Can view the endpoint's configuration, state, metrics and logs",
    PermissionLevel.CAN_QUERY: "Can view and query the endpoint",
    PermissionLevel.CAN_MANAGE: "Can view, query, change, delete and set permissions of the endpoint",
}
# ai_gateway features zeroserve does not implement are refused rather than silently ignored.
_UNSUPPORTED_AI_GATEWAY = ("guardrails", "fallback_config")


def _json_response(content: Any, status_code: int = 200) -> Response:
    try:
        body = orjson.dumps(content)
    except TypeError:
        # Audit rows written before bodies were parsed like the data plane parses them can hold integers
        # past 64 bits, which orjson does not write; the standard encoder does.
        body = json.dumps(content, separators=(",", ":")).encode()
    return Response(body, status_code=status_code, media_type="application/json")


def permissions_body(ref: EndpointRef, entries: tuple[AclEntry, ...]) -> dict[str, Any]:
    """The ``ServingEndpointPermissions`` object: direct grants, the creator, and the admins group."""
    levels: dict[tuple[str, str], PermissionLevel] = {}
    if ref.creator:
        levels[("user_name", ref.creator)] = PermissionLevel.CAN_MANAGE
    for entry in entries:
        key = (entry.grantee_kind, entry.grantee)
        held = levels.get(key)
        if held is None or entry.level.rank > held.rank:
            levels[key] = entry.level
    acl: list[dict[str, Any]] = [
        {kind: name, "display_name": name,
         "all_permissions": [{"permission_level": level.value, "inherited": False}]}
        for (kind, name), level in levels.items()
    ]
    acl.append({
        "group_name": "admins",
        "all_permissions": [{"permission_level": "CAN_MANAGE", "inherited": True,
                             "inherited_from_object": ["/serving-endpoints/"]}],
    })
    return {"object_id": f"/serving-endpoints/{ref.id}", "object_type": "serving-endpoint",
            "access_control_list": acl}


class FrontDoorApi:
    def __init__(self, front_door: FrontDoor, endpoint_store: EndpointStore | None) -> None:
        self.front_door = front_door
        self.endpoint_store = endpoint_store

    async def _body(self, request: Request) -> Any:
        raw = await request.body()
        if not raw:
            return {}
        return loads_json(raw, max_depth=self.front_door.settings.max_json_depth)

    # -- tokens (admin only) ----------------------------------------------------------------------

    async def create_token(self, request: Request) -> Response:
        require_admin(request)
        body = await self._body(request)
        if not isinstance(body, dict):
            raise InvalidParameterValue("request body must be a JSON object")
        lifetime = body.get("lifetime_seconds")
        if lifetime is not None and (not isinstance(lifetime, int | float) or isinstance(lifetime, bool)):
            raise InvalidParameterValue("lifetime_seconds must be a number of seconds")
        groups = body.get("groups", [])
        if not isinstance(groups, list):
            raise InvalidParameterValue("groups must be a list of group names")
        comment = body.get("comment", "")
        if not isinstance(comment, str):
            raise InvalidParameterValue("comment must be a string")
        admin = body.get("admin", False)
        if not isinstance(admin, bool):
            # bool("false") is True: anything but a JSON boolean would mint admin tokens by accident.
            raise InvalidParameterValue(f"admin must be true or false, got {json.dumps(admin)[:40]}")
        caller = principal_of(request)
        token, info = self.front_door.tokens.create(
            body.get("principal"),  # type: ignore[arg-type]  # validated by create()
            expires_in_s=lifetime,
            groups=groups,
            is_admin=admin,
            comment=comment,
            created_by=caller.name if caller is not None else None,
        )
        return _json_response({"token": token, **info.to_dict()})

    async def list_tokens(self, request: Request) -> Response:
        require_admin(request)
        include_inactive = request.query_params.get("include_inactive", "false").lower() == "true"
        infos = self.front_door.tokens.list(include_inactive=include_inactive)
        return _json_response({"tokens": [info.to_dict() for info in infos]})

    async def get_token(self, request: Request) -> Response:
        require_admin(request)
        return _json_response(self.front_door.tokens.get(request.path_params["token_id"]).to_dict())

    async def revoke_token(self, request: Request) -> Response:
        require_admin(request)
        return _json_response(self.front_door.tokens.revoke(request.path_params["token_id"]).to_dict())

    async def audit(self, request: Request) -> Response:
        require_admin(request)
        params = request.query_params
        try:
            limit = min(int(params.get("limit", "100")), 10_000)
            since_ms = int(params["since_ms"]) if "since_ms" in params else None
        except ValueError:
            raise InvalidParameterValue("limit and since_ms must be integers") from None
        records = self.front_door.audit.list(
            limit=limit, since_ms=since_ms, principal=params.get("principal")
        )
        return _json_response({"records": [record.to_dict() for record in records]})

    async def me(self, request: Request) -> Response:
        """SCIM ``Me`` (``WorkspaceClient().current_user.me()``): who the token belongs to."""
        principal = principal_of(request)
        name = principal.name if principal is not None else "anonymous"
        groups = sorted(principal.groups | ({"admins"} if principal.is_admin else set())) if principal else []
        return _json_response({
            "id": name, "userName": name, "displayName": name, "active": True,
            "groups": [{"display": group, "value": group} for group in groups],
        })

    # -- permissions ------------------------------------------------------------------------------

    async def get_permissions(self, request: Request) -> Response:
        ref = self._endpoint(request, request.path_params["endpoint_id"], PermissionLevel.CAN_VIEW)
        return _json_response(permissions_body(ref, self.front_door.permissions.entries(ref.id)))

    async def set_permissions(self, request: Request) -> Response:
        ref = self._endpoint(request, request.path_params["endpoint_id"], PermissionLevel.CAN_MANAGE)
        entries = parse_access_control_list(await self._body(request))
        if request.method == "PUT":
            self.front_door.permissions.replace(ref.id, entries)
        else:
            self.front_door.permissions.update(ref.id, entries)
        return _json_response(permissions_body(ref, self.front_door.permissions.entries(ref.id)))

    async def permission_levels(self, request: Request) -> Response:
        self._endpoint(request, request.path_params["endpoint_id"], PermissionLevel.CAN_VIEW)
        return _json_response({"permission_levels": [
            {"permission_level": level.value, "description": text}
            for level, text in LEVEL_DESCRIPTIONS.items()
        ]})

    def _endpoint(self, request: Request, endpoint: str, level: PermissionLevel) -> EndpointRef:
        ref = self.front_door.authorizer.authorize(principal_of(request), endpoint, level)
        if ref is None:  # auth disabled and no such endpoint
            raise EndpointNotFound(endpoint)
        return ref

    # -- rate limits and AI gateway settings (stored with the endpoint) ---------------------------

    async def put_rate_limits(self, request: Request) -> Response:
        ref = self._endpoint(request, request.path_params["name"], PermissionLevel.CAN_MANAGE)
        body = await self._body(request)
        if not isinstance(body, dict):
            raise InvalidParameterValue("request body must be a JSON object with 'rate_limits'")
        rules = [rule.to_dict() for rule in parse_rate_limits(body.get("rate_limits", []), "rate_limits")]
        self._save(request, ref, "rate_limits", rules)
        return _json_response({"rate_limits": rules})

    async def put_ai_gateway(self, request: Request) -> Response:
        ref = self._endpoint(request, request.path_params["name"], PermissionLevel.CAN_MANAGE)
        body = await self._body(request)
        if not isinstance(body, dict):
            raise InvalidParameterValue("request body must be a JSON object")
        for feature in _UNSUPPORTED_AI_GATEWAY:
            if body.get(feature):
                raise InvalidParameterValue(f"ai_gateway.{feature} is not supported by zeroserve")
        config = {key: value for key, value in body.items() if value is not None}
        if "rate_limits" in config:
            rules = parse_rate_limits(config["rate_limits"], "ai_gateway")
            config["rate_limits"] = [rule.to_dict() for rule in rules]
        self._save(request, ref, "ai_gateway", config)
        return _json_response(config)

    def _save(self, request: Request, ref: EndpointRef, key: str, value: Any) -> None:
        assert self.endpoint_store is not None  # the routes exist only with a store
        principal = principal_of(request)
        self.endpoint_store.set_extra(ref.name, key, value, principal.name if principal is not None else None)
        invalidate = getattr(self.front_door.directory, "invalidate", None)
        if invalidate is not None:
            invalidate()

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route(TOKENS, self.create_token, methods=["POST"]),
            Route(TOKENS, self.list_tokens, methods=["GET"]),
            Route(TOKENS + "/{token_id}", self.get_token, methods=["GET"]),
            Route(TOKENS + "/{token_id}", self.revoke_token, methods=["DELETE"]),
            Route("/api/2.0/zeroserve/audit", self.audit, methods=["GET"]),
            Route("/api/2.0/preview/scim/v2/Me", self.me, methods=["GET"]),
            Route(PERMISSIONS, self.get_permissions, methods=["GET"]),
            Route(PERMISSIONS, self.set_permissions, methods=["PUT", "PATCH"]),
            Route(PERMISSIONS + "/permissionLevels", self.permission_levels, methods=["GET"]),
        ]
        if self.endpoint_store is not None:
            routes += [
                Route(ENDPOINT + "/rate-limits", self.put_rate_limits, methods=["PUT"]),
                Route(ENDPOINT + "/ai-gateway", self.put_ai_gateway, methods=["PUT"]),
            ]
        return routes


def front_door_routes(front_door: FrontDoor, endpoint_store: EndpointStore | None = None) -> list[BaseRoute]:
    return FrontDoorApi(front_door, endpoint_store).routes()
