"""The MCP server inside a real gateway app, in process: the official client over the gateway's ASGI app,
the autoscaler's fake backend, and a real stand-in replica (``EchoReplica``: it answers a query with the
body it was sent). What needs real replica processes is in test_mcp_gateway.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from pydantic import SecretStr

from autoscaler.spec import EntitySpec
from autoscaler.testing import FakeBackend, FakeClock
from autoscaler.types import EntityKey, ReplicaInfo
from router.auth.settings import SecuritySettings
from router.gateway import Gateway
from router.settings import GatewaySettings
from tests.router._servers import EchoReplica, echo_replica

ADMIN_TOKEN = "mcp-in-process-admin-" + "t" * 32
BASE_URL = "http://127.0.0.1:8484"  # a loopback Host, as the default host policy wants


class EchoBackend(FakeBackend):
    """Fake replicas (records) whose URL is the echo replica."""

    def __init__(self, clock: FakeClock, port: int) -> None:
        super().__init__(clock)
        self.port = port

    async def start_replica(self, entity: EntityKey, spec: EntitySpec, replica_id: str) -> ReplicaInfo:
        info = await super().start_replica(entity, spec, replica_id)
        return dataclasses.replace(info, url=f"http://127.0.0.1:{self.port}")


def write_model(directory: Path, *, outputs: bool) -> str:
    directory.mkdir(parents=True)
    signature = "signature:\n  inputs: '" + json.dumps([{"type": "double", "name": "x"}]) + "'\n"
    if outputs:
        signature += "  outputs: '" + json.dumps([{"type": "double", "name": "score"}]) + "'\n"
    (directory / "MLmodel").write_text("flavors:\n  python_function: {}\n" + signature)
    return f"file://{directory}"


@dataclasses.dataclass
class InProcess:
    gateway: Gateway
    clock: FakeClock
    replica: EchoReplica
    models: dict[str, str]
    http: httpx.AsyncClient

    async def deploy(self, name: str, model: str) -> None:
        body = {"name": name, "config": {"served_entities": [{"name": f"{name}-1",
                                                              "entity_name": self.models[model]}]}}
        assert (await self.http.post("/api/2.0/serving-endpoints", json=body)).status_code == 200
        for _ in range(200):
            state = (await self.http.get(f"/api/2.0/serving-endpoints/{name}")).json()["state"]
            if state["ready"] == "READY":
                return
            await self.clock.advance(0.5)
            await asyncio.sleep(0.01)
        raise AssertionError(f"{name} not READY")


@contextlib.asynccontextmanager
async def in_process(tmp_path: Path, security: SecuritySettings) -> AsyncIterator[InProcess]:
    models = {"scored": write_model(tmp_path / "scored", outputs=True),
              "unscored": write_model(tmp_path / "unscored", outputs=False)}
    clock = FakeClock()
    async with echo_replica("echo") as replica:
        gateway = Gateway(GatewaySettings(home=tmp_path / "home", rollout_timeout_s=3.0),
                          backend=EchoBackend(clock, replica.port), clock=clock, security=security)
        await gateway.start()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway.asgi), base_url=BASE_URL,
                                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
                yield InProcess(gateway, clock, replica, models, http)
        finally:
            await gateway.aclose()


@contextlib.asynccontextmanager
async def mcp_client(world: InProcess, token: str | None = ADMIN_TOKEN) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx2.ASGITransport(app=world.gateway.asgi)
    async with (
        httpx2.AsyncClient(transport=transport, headers=headers, base_url=BASE_URL) as http,
        Client(streamable_http_client(f"{BASE_URL}/mcp", http_client=http)) as client,
    ):
        yield client


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[InProcess]:
    async with in_process(tmp_path, SecuritySettings(admin_token=SecretStr(ADMIN_TOKEN))) as running:
        yield running


def text_of(result: Any) -> str:
    return "\n".join(item.text for item in result.content if item.type == "text")


async def test_an_answer_outside_the_output_signature_is_a_tool_error(world: InProcess) -> None:
    await world.deploy("scored", "scored")
    async with mcp_client(world) as client:
        result = await client.call_tool("scored", {"x": 1.5})  # the echo answers with the request body
    assert result.is_error
    violation = "answer: 'predictions' is a required property"
    assert f"answered outside its declared output signature ({violation})" in text_of(result)
    assert world.replica.requests == 1


async def test_without_an_output_signature_the_answer_is_passed_on(world: InProcess) -> None:
    await world.deploy("unscored", "unscored")
    async with mcp_client(world) as client:
        [tool] = [t for t in (await client.list_tools()).tools if t.name == "unscored"]
        result = await client.call_tool("unscored", {"records": [{"x": 1.0}, {"x": 2.0}]})
    assert tool.output_schema is None
    assert not result.is_error
    assert result.structured_content == {"dataframe_records": [{"x": 1.0}, {"x": 2.0}]}  # what was sent
    assert world.replica.seen_headers[-1]["content-type"] == "application/json"
    assert "authorization" not in world.replica.seen_headers[-1]  # credentials stop at the gateway


async def test_an_endpoint_named_like_a_builtin_tool_is_still_callable(world: InProcess) -> None:
    await world.deploy("list_endpoints", "unscored")
    async with mcp_client(world) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        listed = await client.call_tool("list_endpoints", {})
        queried = await client.call_tool("query_list_endpoints", {"x": 3.0})
    assert {"list_endpoints", "query_list_endpoints"} <= names
    assert listed.structured_content is not None
    assert listed.structured_content["endpoints"][0]["tool"] == "query_list_endpoints"
    assert queried.structured_content == {"dataframe_records": [{"x": 3.0}]}


async def test_without_auth_every_endpoint_is_a_tool(tmp_path: Path) -> None:
    async with in_process(tmp_path, SecuritySettings(insecure_no_auth=True)) as running:
        await running.deploy("unscored", "unscored")
        async with mcp_client(running, token=None) as client:
            result = await client.call_tool("unscored", {"x": 1.0})
    assert result.structured_content == {"dataframe_records": [{"x": 1.0}]}


async def test_the_session_manager_ends_with_the_gateway(tmp_path: Path) -> None:
    async with in_process(tmp_path, SecuritySettings(admin_token=SecretStr(ADMIN_TOKEN))) as running:
        mount = running.gateway.mcp
        assert mount._runner is None  # nothing started before the first MCP request
        async with mcp_client(running) as client:
            await client.list_tools()
        runner = mount._runner
        assert runner is not None and not runner.done()
    assert runner.done() and not runner.cancelled() and runner.exception() is None
