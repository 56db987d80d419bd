"""An in-process gateway over the autoscaler's fake backend (replicas are records, not processes), so
the control plane's shapes, validation and rollout sequencing can be tested fast and exactly. The real
processes are exercised by tests/router/test_gateway_e2e.py."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from autoscaler.spec import EntitySpec
from autoscaler.testing import FakeBackend, FakeClock
from autoscaler.types import EntityKey, ReplicaInfo, ReplicaOptimization
from router.auth.settings import SecuritySettings
from router.gateway import Gateway
from router.settings import GatewaySettings

ADMIN_TOKEN = "test-admin-token-" + "x" * 32
API = "/api/2.0/serving-endpoints"


@dataclass
class Harness:
    gateway: Gateway
    backend: FakeBackend
    clock: FakeClock
    client: httpx.AsyncClient

    async def settle(self, name: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """Poll like a client until the endpoint's config update is done."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            response = await self.client.get(f"{API}/{name}")
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["state"]["config_update"] != "IN_PROGRESS":
                return body
            assert asyncio.get_running_loop().time() < deadline, f"{name} still updating: {body}"
            # Fake time passes too: start retries back off on the autoscaler's clock.
            await self.clock.advance(0.5)
            await asyncio.sleep(0.02)


class LoopbackFakeBackend(FakeBackend):
    """The autoscaler's fake, with replica URLs the router accepts (host:port; nothing listens there,
    and these tests send no queries), announcing a serving path the way real replicas do."""

    async def start_replica(self, entity: EntityKey, spec: EntitySpec, replica_id: str) -> ReplicaInfo:
        info = await super().start_replica(entity, spec, replica_id)
        path = "native" if spec.optimization == "off" else "onnx"
        optimization = ReplicaOptimization(path, f"fake replica {replica_id}", spec.optimization)
        return dataclasses.replace(info, url="http://127.0.0.1:9", optimization=optimization)


def make_gateway(home: Path, backend: FakeBackend, clock: FakeClock) -> Gateway:
    settings = GatewaySettings(home=home, rollout_timeout_s=3.0)
    security = SecuritySettings(admin_token=SecretStr(ADMIN_TOKEN))
    return Gateway(settings, backend=backend, clock=clock, security=security)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    clock = FakeClock()
    backend = LoopbackFakeBackend(clock)
    gateway = make_gateway(tmp_path, backend, clock)
    await gateway.start()
    transport = httpx.ASGITransport(app=gateway.asgi)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", headers=headers
        ) as client:
            yield Harness(gateway, backend, clock, client)
    finally:
        await gateway.aclose()


def entity(uri: str = "file:///models/propensity", version: str = "1", **fields: Any) -> dict[str, Any]:
    return {"entity_name": uri, "entity_version": version, **fields}
