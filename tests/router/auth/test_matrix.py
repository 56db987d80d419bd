"""The authorization matrix: every route of the real gateway app x every kind of caller -> the status.

One table (``TABLE``) says, per route (method + path template), who may use it and what an allowed call
answers; the expected status of every caller follows from it. ``test_every_route_has_a_row`` enumerates
the app's actual routes, so a route added without a row fails until someone decides who may use it.

Allowed calls are made so that they are cheap and repeatable: queries meet a 0-calls-per-minute rate
limit (429 proves the call got past authorization and was refused before queueing), mutations send
either an invalid body (400 after the permission check) or one that restates the current value.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from autoscaler.testing import FakeClock
from router.auth.types import PermissionLevel
from router.gateway import Gateway
from tests.router.api.conftest import ADMIN_TOKEN, LoopbackFakeBackend, entity, make_gateway
from tests.router.auth.conftest import StandInBackend, running_server, stand_in_replica

API = "/api/2.0/serving-endpoints"
ENDPOINT = "guarded"
DOOMED = "doomed"  # recreated before every allowed DELETE


class Caller(enum.Enum):
    NO_TOKEN = "no-token"
    BAD_TOKEN = "bad-token"
    EXPIRED = "expired"
    REVOKED = "revoked"
    STRANGER = "stranger"  # a valid token with no grant on the endpoint
    VIEWER = "CAN_VIEW"
    QUERIER = "CAN_QUERY"
    MANAGER = "CAN_MANAGE"
    ADMIN = "admin"


UNAUTHENTICATED = {Caller.NO_TOKEN, Caller.BAD_TOKEN, Caller.EXPIRED, Caller.REVOKED}
HELD = {
    Caller.STRANGER: None, Caller.VIEWER: PermissionLevel.CAN_VIEW, Caller.QUERIER: PermissionLevel.CAN_QUERY,
    Caller.MANAGER: PermissionLevel.CAN_MANAGE, Caller.ADMIN: PermissionLevel.CAN_MANAGE,
}


class Need(enum.Enum):
    PUBLIC = "public"
    TOKEN = "any valid token"
    ADMIN = "admin"
    VIEW = "CAN_VIEW"
    QUERY = "CAN_QUERY"
    MANAGE = "CAN_MANAGE"


@dataclass(frozen=True)
class Row:
    need: Need
    allowed: int  # the status of an allowed call
    path: str | None = None  # the concrete path; default: the template with the fixtures filled in
    body: Any = None  # JSON body
    recreate: bool = False  # the call destroys its target: rebuild it before each allowed call
    headers: dict[str, str] | None = None


ACL = {"access_control_list": [
    {"user_name": "viewer", "permission_level": "CAN_VIEW"},
    {"user_name": "querier", "permission_level": "CAN_QUERY"},
    {"group_name": "managers", "permission_level": "CAN_MANAGE"},
]}
CLOSED = {"rate_limits": [{"calls": 0, "key": "endpoint", "renewal_period": "minute"}]}
ONE = API + "/{name}"
SERVED = ONE + "/served-models/{served}"
PERMS = "/api/2.0/permissions/serving-endpoints/{endpoint_id}"
TOKENS = "/api/2.0/zeroserve/tokens"
SHARES = "/api/2.0/zeroserve/shares"
DS_SHARE = "/delta-sharing/shares/{share}"
DS_TABLE = DS_SHARE + "/schemas/{schema}/tables/{table}"

TABLE: dict[tuple[str, str], Row] = {
    ("GET", API): Row(Need.TOKEN, 200),
    ("POST", API): Row(Need.TOKEN, 400, body={"name": "x"}),
    ("GET", ONE): Row(Need.VIEW, 200),
    ("DELETE", ONE): Row(Need.MANAGE, 200, path=f"{API}/{DOOMED}", recreate=True),
    ("PUT", ONE + "/config"): Row(Need.MANAGE, 400, body={}),
    ("PATCH", ONE + "/tags"): Row(Need.MANAGE, 200, body={"add_tags": [{"key": "team", "value": "ds"}]}),
    ("GET", ONE + "/metrics"): Row(Need.VIEW, 200),
    ("GET", ONE + "/openapi"): Row(Need.VIEW, 200),
    ("GET", ONE + "/events"): Row(Need.VIEW, 200),
    ("GET", SERVED + "/logs"): Row(Need.VIEW, 200),
    ("GET", SERVED + "/build-logs"): Row(Need.VIEW, 200),
    ("PUT", ONE + "/rate-limits"): Row(Need.MANAGE, 200, body=CLOSED),
    ("PUT", ONE + "/ai-gateway"): Row(Need.MANAGE, 200, body={}),
    ("POST", TOKENS): Row(Need.ADMIN, 200, body={"principal": "made-in-matrix"}),
    ("GET", TOKENS): Row(Need.ADMIN, 200),
    ("GET", TOKENS + "/{token_id}"): Row(Need.ADMIN, 200),
    ("DELETE", TOKENS + "/{token_id}"): Row(Need.ADMIN, 200),
    ("GET", "/api/2.0/zeroserve/audit"): Row(Need.ADMIN, 200),
    ("GET", "/api/2.0/preview/scim/v2/Me"): Row(Need.TOKEN, 200),
    ("GET", PERMS): Row(Need.VIEW, 200),
    ("PUT", PERMS): Row(Need.MANAGE, 200, body=ACL),
    ("PATCH", PERMS): Row(Need.MANAGE, 200, body=ACL),
    ("GET", PERMS + "/permissionLevels"): Row(Need.VIEW, 200),
    ("POST", "/serving-endpoints/{name}/invocations"): Row(Need.QUERY, 429, body={"inputs": [[1.0]]}),
    ("GET", "/v2"): Row(Need.TOKEN, 200),
    ("GET", "/v2/health/live"): Row(Need.TOKEN, 200),
    ("GET", "/v2/health/ready"): Row(Need.TOKEN, 200),
    ("GET", "/v2/models/{name}"): Row(Need.VIEW, 200),  # forwarded to the stand-in replica
    ("GET", "/v2/models/{name}/versions/{version}"): Row(Need.VIEW, 200),
    ("GET", "/v2/models/{name}/ready"): Row(Need.VIEW, 200),
    ("GET", "/v2/models/{name}/versions/{version}/ready"): Row(Need.VIEW, 200),
    ("POST", "/v2/models/{name}/infer"): Row(Need.QUERY, 429, body={"inputs": []}),
    ("POST", "/v2/models/{name}/versions/{version}/infer"): Row(Need.QUERY, 429, body={"inputs": []}),
    ("GET", "/metrics"): Row(Need.ADMIN, 200),  # every endpoint's numbers
    ("GET", "/api/2.0/zeroserve/overview"): Row(Need.TOKEN, 200),  # filtered to what the caller may see
    ("GET", "/api/2.0/zeroserve/timeseries/{name}"): Row(Need.VIEW, 200),
    ("GET", "/dashboard"): Row(Need.PUBLIC, 200),  # static page and assets; the data needs a token
    ("GET", "/dashboard/dashboard.js"): Row(Need.PUBLIC, 200),
    ("GET", "/dashboard/dashboard.css"): Row(Need.PUBLIC, 200),
    ("GET", "/dashboard/favicon.svg"): Row(Need.PUBLIC, 200),
    ("GET", "/favicon.ico"): Row(Need.PUBLIC, 200),  # browsers ask for it without a token
    # MCP: any token may talk to it; which tools it lists and runs is decided per endpoint inside.
    ("POST", "/mcp"): Row(Need.TOKEN, 400, body={}),  # not JSON-RPC
    # Without text/event-stream in Accept the stream is refused instead of held open.
    ("GET", "/mcp"): Row(Need.TOKEN, 406, headers={"accept": "application/json"}),
    ("DELETE", "/mcp"): Row(Need.TOKEN, 405),  # stateless: no sessions to end
    ("GET", "/healthz"): Row(Need.PUBLIC, 200),
    ("GET", "/readyz"): Row(Need.PUBLIC, 200),
    ("GET", "/api/2.0/zeroserve/fleet"): Row(Need.ADMIN, 200),  # gateways' addresses and pids
    ("GET", "/.well-known/databricks-config"): Row(Need.PUBLIC, 200),  # the SDK asks it without a token
    ("GET", "/openapi.json"): Row(Need.TOKEN, 200),
    # Delta Sharing: any token may ask; a share it was not given to is as absent as one that does not
    # exist (404), so every caller gets the same answers here (no share exists in this gateway).
    ("GET", "/delta-sharing/shares"): Row(Need.TOKEN, 200),
    ("GET", DS_SHARE): Row(Need.TOKEN, 404),
    ("GET", DS_SHARE + "/schemas"): Row(Need.TOKEN, 404),
    ("GET", DS_SHARE + "/schemas/{schema}/tables"): Row(Need.TOKEN, 404),
    ("GET", DS_SHARE + "/all-tables"): Row(Need.TOKEN, 404),
    ("GET", DS_TABLE + "/version"): Row(Need.TOKEN, 404),
    ("GET", DS_TABLE + "/metadata"): Row(Need.TOKEN, 404),
    ("POST", DS_TABLE + "/query"): Row(Need.TOKEN, 404, body={}),
    ("GET", "/delta-sharing/files"): Row(Need.PUBLIC, 403),  # the signed URL is the credential
    ("GET", SHARES): Row(Need.ADMIN, 200),
    ("POST", SHARES): Row(Need.ADMIN, 400, body={}),  # no name
    ("GET", SHARES + "/{share}"): Row(Need.ADMIN, 404),
    ("DELETE", SHARES + "/{share}"): Row(Need.ADMIN, 404),
    ("POST", SHARES + "/{share}/tables"): Row(Need.ADMIN, 404, body={}),
    ("DELETE", SHARES + "/{share}/tables/{schema}/{table}"): Row(Need.ADMIN, 404),
    ("POST", SHARES + "/{share}/recipients"): Row(Need.ADMIN, 404, body={}),
    ("DELETE", SHARES + "/{share}/recipients/{principal}"): Row(Need.ADMIN, 404),
}

LEVEL_OF = {Need.VIEW: PermissionLevel.CAN_VIEW, Need.QUERY: PermissionLevel.CAN_QUERY,
            Need.MANAGE: PermissionLevel.CAN_MANAGE}


def expected_status(row: Row, caller: Caller) -> int:
    if row.need is Need.PUBLIC:
        return row.allowed
    if caller in UNAUTHENTICATED:
        return 401
    if row.need is Need.TOKEN:
        return row.allowed
    if row.need is Need.ADMIN:
        return row.allowed if caller is Caller.ADMIN else 403
    held = HELD[caller]
    if held is None:
        return 404  # may not see it: indistinguishable from "does not exist"
    return row.allowed if held.includes(LEVEL_OF[row.need]) else 403


def app_routes(gateway: Gateway) -> set[tuple[str, str]]:
    routes = set()
    for route in gateway.app.routes:
        assert isinstance(route, Route), f"unexpected route type {route!r}: teach this test about it"
        for method in route.methods or ():
            if method != "HEAD":  # Starlette adds HEAD to every GET
                routes.add((method, route.path))
    return routes


@dataclass
class World:
    gateway: Gateway
    clock: FakeClock
    admin: httpx.AsyncClient
    anonymous: httpx.AsyncClient  # no default headers: each call brings its own token, or none
    tokens: dict[Caller, str | None]
    fill: dict[str, str]

    async def call(
        self, caller: Caller, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        token = self.tokens[caller]
        headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token is not None else {})}
        return await self.anonymous.request(method, path, json=body, headers=headers)

    async def ensure_endpoint(self, name: str) -> None:
        if (await self.admin.get(f"{API}/{name}")).status_code == 404:
            await self.create_endpoint(name)

    async def create_endpoint(self, name: str) -> str:
        response = await self.admin.post(API, json={"name": name, "config": {"served_entities": [entity()]}})
        assert response.status_code == 200, response.text
        endpoint = await self.settle(name)
        permissions = await self.admin.put(f"/api/2.0/permissions/serving-endpoints/{endpoint['id']}",
                                           json=ACL)
        assert permissions.status_code == 200, permissions.text
        closed = await self.admin.put(f"{API}/{name}/rate-limits", json=CLOSED)
        assert closed.status_code == 200, closed.text
        return str(endpoint["id"])

    async def settle(self, name: str) -> dict[str, Any]:
        for _ in range(250):
            body: dict[str, Any] = (await self.admin.get(f"{API}/{name}")).json()
            if body["state"]["config_update"] != "IN_PROGRESS" and body["state"]["ready"] == "READY":
                return body
            await self.clock.advance(0.5)
            await asyncio.sleep(0.02)
        raise AssertionError(f"{name} did not become ready: {body}")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    with running_server(stand_in_replica) as replica_port:
        clock = FakeClock()
        gateway = make_gateway(tmp_path, StandInBackend(clock, replica_port), clock)
        await gateway.start()
        transport = httpx.ASGITransport(app=gateway.asgi)
        admin = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8484",
                                  headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        anonymous = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8484")
        try:
            yield await _populate(gateway, clock, admin, anonymous)
        finally:
            await admin.aclose()
            await anonymous.aclose()
            await gateway.aclose()


async def _populate(
    gateway: Gateway, clock: FakeClock, admin: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> World:
    """Tokens for every kind of caller, and the endpoint they call, with its grants and a closed limit."""
    async def token(principal: str, **extra: Any) -> dict[str, Any]:
        response = await admin.post(TOKENS, json={"principal": principal, **extra})
        assert response.status_code == 200, response.text
        created: dict[str, Any] = response.json()
        return created

    expired = await token("viewer", lifetime_seconds=0.001)
    revoked = await token("manager", groups=["managers"])
    assert (await admin.delete(f"{TOKENS}/{revoked['token_id']}")).status_code == 200
    tokens: dict[Caller, str | None] = {
        Caller.NO_TOKEN: None,
        Caller.BAD_TOKEN: "zs_0123456789abcdef_" + "A" * 43,
        Caller.EXPIRED: expired["token"],
        Caller.REVOKED: revoked["token"],
        Caller.STRANGER: (await token("stranger"))["token"],
        Caller.VIEWER: (await token("viewer"))["token"],
        Caller.QUERIER: (await token("querier"))["token"],
        Caller.MANAGER: (await token("boss", groups=["managers"]))["token"],
        Caller.ADMIN: ADMIN_TOKEN,
    }
    target = await token("target-of-revoke")
    world = World(gateway, clock, admin, anonymous, tokens, {"token_id": target["token_id"], "version": "1",
                                                             "share": "no-such-share", "schema": "risk",
                                                             "table": "scores", "principal": "bank"})
    world.fill["endpoint_id"] = await world.create_endpoint(ENDPOINT)
    world.fill["name"] = ENDPOINT
    endpoint = await world.settle(ENDPOINT)
    world.fill["served"] = endpoint["config"]["served_entities"][0]["name"]
    await asyncio.sleep(0.01)  # the expired token's millisecond is over
    return world


def test_every_route_has_a_row(tmp_path: Path) -> None:
    clock = FakeClock()
    gateway = make_gateway(tmp_path, LoopbackFakeBackend(clock), clock)
    try:
        routes = app_routes(gateway)
    finally:
        gateway.db.close()
    missing = sorted(routes - TABLE.keys())
    assert not missing, f"routes without a row in the authorization matrix: {missing}"
    stale = sorted(TABLE.keys() - routes)
    assert not stale, f"rows for routes the gateway no longer has: {stale}"


async def test_authorization_matrix(world: World) -> None:
    mismatches: list[str] = []
    for (method, template), row in sorted(TABLE.items(), key=lambda item: item[0][1]):
        for caller in Caller:
            expected = expected_status(row, caller)
            if row.recreate:
                await world.ensure_endpoint(DOOMED)
            path = row.path or template.format(**world.fill)
            try:
                response = await asyncio.wait_for(world.call(caller, method, path, row.body, row.headers), 10)
            except TimeoutError:
                mismatches.append(f"{method} {template} as {caller.value}: no answer within 10 s")
                continue
            if response.status_code != expected:
                mismatches.append(f"{method} {template} as {caller.value}: expected {expected},"
                                  f" got {response.status_code} {response.text[:200]}")
            elif expected == 401:
                assert response.headers["www-authenticate"].startswith("Bearer")
            elif expected == 429:
                assert int(response.headers["retry-after"]) >= 1
            if expected in (401, 403, 404, 429) and not template.startswith("/mcp"):
                # One error shape whichever layer refused: Open Inference Protocol clients read "error".
                body = response.json()
                assert body["error_code"] and body["message"], (method, template, caller, body)
                if template == "/v2" or template.startswith("/v2/"):
                    assert body.get("error") == body["message"], (method, template, caller, body)
    assert not mismatches, "\n".join(mismatches)


async def test_hidden_endpoint_answers_like_a_missing_one(world: World) -> None:
    for path in (API + "/{}", "/serving-endpoints/{}/invocations", "/v2/models/{}/infer"):
        method = "GET" if path.startswith(API) else "POST"
        hidden = await world.call(Caller.STRANGER, method, path.format(ENDPOINT), {"inputs": []})
        missing = await world.call(Caller.STRANGER, method, path.format("no-such-endpoint"), {"inputs": []})
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["message"].replace(ENDPOINT, "X") == missing.json()["message"].replace(
            "no-such-endpoint", "X")


async def test_lists_show_only_visible_endpoints(world: World) -> None:
    await world.create_endpoint("another")
    revoked = await world.admin.put(f"/api/2.0/permissions/serving-endpoints/{ENDPOINT}",
                                    json={"access_control_list": []})
    assert revoked.status_code == 200

    def names(response: httpx.Response) -> list[str]:
        return sorted(endpoint["name"] for endpoint in response.json()["endpoints"])

    assert names(await world.call(Caller.ADMIN, "GET", API)) == ["another", ENDPOINT]
    assert names(await world.call(Caller.VIEWER, "GET", API)) == ["another"]
    assert names(await world.call(Caller.STRANGER, "GET", API)) == []


async def test_public_v2_health_when_configured(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from router.auth.settings import SecuritySettings
    from router.settings import GatewaySettings

    clock = FakeClock()
    gateway = Gateway(GatewaySettings(home=tmp_path), backend=LoopbackFakeBackend(clock), clock=clock,
                      security=SecuritySettings(admin_token=SecretStr(ADMIN_TOKEN), public_v2_health=True))
    await gateway.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway.asgi),
                                     base_url="http://127.0.0.1:8484") as anonymous:
            assert (await anonymous.get("/v2/health/live")).status_code == 200
            assert (await anonymous.get("/v2/health/ready")).status_code == 200
            assert (await anonymous.get("/v2")).status_code == 401
    finally:
        await gateway.aclose()
