"""The front door's API over a real gateway on loopback, driven by the stock databricks-sdk where it has
a call for it: permissions, identity, rate limits and AI-gateway settings, tokens, audit; and bad
bodies sent to the gateway itself, which must answer 4xx and stay healthy."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.service.serving import (
    AiGatewayRateLimit,
    AiGatewayRateLimitKey,
    AiGatewayRateLimitRenewalPeriod,
    RateLimit,
    RateLimitKey,
    RateLimitRenewalPeriod,
    ServingEndpointAccessControlRequest,
    ServingEndpointPermissionLevel,
)

from tests.router.auth.conftest import ADMIN_TOKEN, ServedGateway, serving_gateway

TOKENS = "/api/2.0/zeroserve/tokens"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[ServedGateway]:
    async with serving_gateway(tmp_path) as gateway:
        yield gateway


async def sdk(url: str, token: str) -> WorkspaceClient:
    # The constructor already calls the gateway (host metadata): off the loop that serves it.
    return await asyncio.to_thread(WorkspaceClient, host=url, token=token, auth_type="pat")


async def new_token(served: ServedGateway, principal: str, **extra: Any) -> str:
    response = await served.admin.post(TOKENS, json={"principal": principal, **extra})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def test_permissions_and_rate_limits_through_the_databricks_sdk(served: ServedGateway) -> None:
    endpoint = await served.create_endpoint("fraud")
    admin = await sdk(served.url, ADMIN_TOKEN)
    assert (await asyncio.to_thread(admin.current_user.me)).user_name == "admin"

    acl = [ServingEndpointAccessControlRequest(user_name="alice",
                                               permission_level=ServingEndpointPermissionLevel.CAN_QUERY)]
    result = await asyncio.to_thread(admin.serving_endpoints.set_permissions, endpoint["id"],
                                     access_control_list=acl)
    assert result.object_id == f"/serving-endpoints/{endpoint['id']}"
    group = [ServingEndpointAccessControlRequest(group_name="analysts",
                                                 permission_level=ServingEndpointPermissionLevel.CAN_QUERY)]
    await asyncio.to_thread(admin.serving_endpoints.update_permissions, endpoint["id"],
                            access_control_list=group)
    current = await asyncio.to_thread(admin.serving_endpoints.get_permissions, endpoint["id"])
    levels = {(entry.user_name or entry.group_name): entry.all_permissions[0].permission_level
              for entry in current.access_control_list or [] if entry.all_permissions}
    assert levels == {"admin": ServingEndpointPermissionLevel.CAN_MANAGE,  # the creator
                      "alice": ServingEndpointPermissionLevel.CAN_QUERY,
                      "analysts": ServingEndpointPermissionLevel.CAN_QUERY,
                      "admins": ServingEndpointPermissionLevel.CAN_MANAGE}
    described = await asyncio.to_thread(admin.serving_endpoints.get_permission_levels, endpoint["id"])
    assert [d.permission_level for d in described.permission_levels or []] == [
        ServingEndpointPermissionLevel.CAN_VIEW, ServingEndpointPermissionLevel.CAN_QUERY,
        ServingEndpointPermissionLevel.CAN_MANAGE]

    # One call per minute per user, through the legacy API; an AI-gateway rule for bob alone on top.
    put = await asyncio.to_thread(admin.serving_endpoints.put, "fraud", rate_limits=[
        RateLimit(calls=1, renewal_period=RateLimitRenewalPeriod.MINUTE, key=RateLimitKey.USER)])
    assert put.rate_limits is not None and put.rate_limits[0].calls == 1
    gateway_rule = AiGatewayRateLimit(calls=5, renewal_period=AiGatewayRateLimitRenewalPeriod.MINUTE,
                                      key=AiGatewayRateLimitKey.USER, principal="bob")
    ai = await asyncio.to_thread(admin.serving_endpoints.put_ai_gateway, "fraud", rate_limits=[gateway_rule])
    assert ai.rate_limits is not None and ai.rate_limits[0].principal == "bob"
    shown = await asyncio.to_thread(admin.serving_endpoints.get, "fraud")
    assert shown.ai_gateway is not None and shown.ai_gateway.rate_limits is not None

    alice = await new_token(served, "alice")
    bob = await new_token(served, "bob", groups=["analysts"])
    carol = await new_token(served, "carol")
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        def invoke(token: str) -> Any:
            return client.post("/serving-endpoints/fraud/invocations", json={"inputs": [[1.0]]},
                               headers={"Authorization": f"Bearer {token}"})

        assert (await invoke(alice)).status_code == 200
        limited = await invoke(alice)
        assert limited.status_code == 429
        assert limited.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert (await invoke(bob)).status_code == 200  # bob has his own bucket
        assert (await invoke(carol)).status_code == 404  # no grant: cannot even see it

    # The audit trail has every change, with who made it; secrets never appear in it.
    audit = (await served.admin.get("/api/2.0/zeroserve/audit", params={"limit": 100})).json()["records"]
    changes = {(r["method"], r["path"]) for r in audit if r["principal"] == "admin" and r["status"] == 200}
    assert ("PUT", f"/api/2.0/permissions/serving-endpoints/{endpoint['id']}") in changes
    assert ("PATCH", f"/api/2.0/permissions/serving-endpoints/{endpoint['id']}") in changes
    assert ("PUT", "/api/2.0/serving-endpoints/fraud/rate-limits") in changes
    assert ("POST", "/api/2.0/serving-endpoints") in changes
    assert all(token not in str(audit) for token in (alice, bob, carol, ADMIN_TOKEN))
    assert not any(r["path"].startswith("/serving-endpoints/") for r in audit)  # queries are not changes


async def test_non_admins_cannot_manage_tokens_or_read_the_audit(served: ServedGateway) -> None:
    alice = await sdk(served.url, await new_token(served, "alice"))
    assert (await asyncio.to_thread(alice.current_user.me)).user_name == "alice"
    async with httpx.AsyncClient(base_url=served.url, timeout=10,
                                 headers={"Authorization": f"Bearer {alice.config.token}"}) as client:
        assert (await client.post(TOKENS, json={"principal": "mallory", "admin": True})).status_code == 403
        assert (await client.get(TOKENS)).status_code == 403
        assert (await client.get("/api/2.0/zeroserve/audit")).status_code == 403


async def test_token_lifecycle(served: ServedGateway) -> None:
    created = (await served.admin.post(TOKENS, json={"principal": "svc", "lifetime_seconds": 3600,
                                                     "groups": ["batch"], "comment": "nightly"})).json()
    assert created["token"].startswith("zs_") and created["expiry_time"] > created["creation_time"]
    listed = (await served.admin.get(TOKENS)).json()["tokens"]
    assert [t["principal"] for t in listed if t["token_id"] == created["token_id"]] == ["svc"]
    assert all("token" not in t for t in listed)  # the token itself is never shown again
    headers = {"Authorization": f"Bearer {created['token']}"}
    assert (await served.admin.get("/api/2.0/serving-endpoints", headers=headers)).status_code == 200
    assert (await served.admin.delete(f"{TOKENS}/{created['token_id']}")).status_code == 200
    assert (await served.admin.get("/api/2.0/serving-endpoints", headers=headers)).status_code == 401
    assert (await served.admin.delete(f"{TOKENS}/ffffffffffffffff")).status_code == 404
    bad = await served.admin.post(TOKENS, json={"principal": "", "lifetime_seconds": -1})
    assert bad.status_code == 400 and bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    # Found by schemathesis: "admin" was read with bool(), so the string "false" minted an admin token.
    not_booleans: list[object] = ["false", {}, 0, None]
    for not_a_boolean in not_booleans:
        bad = await served.admin.post(TOKENS, json={"principal": "svc", "admin": not_a_boolean})
        assert bad.status_code == 400 and "admin must be true or false" in bad.json()["message"], bad.text


async def test_bad_bodies_get_4xx_and_the_gateway_stays_healthy(tmp_path: Path) -> None:
    async with serving_gateway(tmp_path, max_body_bytes=64 * 1024, body_timeout_s=0.5) as served:
        await served.create_endpoint("fraud")
        client = served.admin
        path = "/api/2.0/permissions/serving-endpoints/fraud"
        cases = [
            (b"{" * 20 + b"}" * 20, 400),  # not JSON, and deep
            (b'{"access_control_list": ' + b"[" * 100 + b"]" * 100 + b"}", 400),  # nested too deep
            (b'{"access_control_list": [{"user_name": "\xff\xfe", "permission_level": "CAN_VIEW"}]}', 400),
            (b"x" * (64 * 1024 + 1), 413),
        ]
        for body, status in cases:
            response = await client.patch(path, content=body, headers={"content-type": "application/json"})
            assert response.status_code == status, (body[:40], response.text)
            assert "Traceback" not in response.text
        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: sent chunked
            yield b"[" + b"1," * 40_000
            yield b"1]"

        chunked = await client.post("/serving-endpoints/fraud/invocations", content=chunks())
        assert chunked.status_code == 413
        # A body shorter than its Content-Length: 408 once the body timeout passes, not a hung task.
        port = int(served.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"PATCH {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n"
                         "content-length: 100\r\n\r\n{".encode())
            answer = await asyncio.to_thread(sock.recv, 65536)
        assert answer.startswith(b"HTTP/1.1 408")
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/api/2.0/serving-endpoints/fraud")).status_code == 200
