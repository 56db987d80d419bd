"""Fixtures for the front door's tests: a fake clock, an in-memory endpoint directory, a front door over
a real SQLite database, and a real uvicorn server on loopback for the tests that need a socket."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from autoscaler.spec import EntitySpec
from autoscaler.testing import FakeBackend
from autoscaler.testing import FakeClock as AutoscalerClock
from autoscaler.types import EntityKey, ReplicaInfo
from router.auth.frontdoor import FrontDoor
from router.auth.settings import SecuritySettings
from router.auth.types import EndpointRef
from router.state.db import Database
from tests._uvicorn import uvicorn_server

ADMIN_TOKEN = "test-admin-token-0123456789abcdef0123456789"


class FakeClock:
    """Wall and monotonic time that move only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeDirectory:
    """A hand-written ``EndpointDirectory``: endpoints by name and id, as the control plane would give."""

    def __init__(self) -> None:
        self.endpoints: dict[str, EndpointRef] = {}

    def add(self, ref: EndpointRef) -> EndpointRef:
        self.endpoints[ref.name] = ref
        return ref

    def lookup_endpoint(self, name_or_id: str) -> EndpointRef | None:
        found = self.endpoints.get(name_or_id)
        if found is not None:
            return found
        return next((ref for ref in self.endpoints.values() if ref.id == name_or_id), None)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(open_db: Callable[[], Database]) -> Database:
    """The front door's stores run on SQLite and on PostgreSQL alike."""
    return open_db()


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory()


@pytest.fixture
def make_front_door(
    db: Database, directory: FakeDirectory, clock: FakeClock
) -> Callable[..., FrontDoor]:
    def make(**settings: Any) -> FrontDoor:
        settings.setdefault("admin_token", ADMIN_TOKEN)
        return FrontDoor(db, directory, SecuritySettings(**settings), clock=clock, monotonic=clock)

    return make


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_server(app: Any, *, harden: bool = False, **options: Any) -> Iterator[int]:
    """A real uvicorn server on 127.0.0.1 in a thread; yields its port, always stopped on exit."""
    from router.auth import tls

    port = free_port()
    options.setdefault("lifespan", "off")
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", **options)
    if harden:
        tls.harden(config)
    server = uvicorn.Server(config)  # in a thread, uvicorn leaves signal handlers alone
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            threading.Event().wait(0.01)
        else:
            raise RuntimeError("uvicorn did not start within 5 s")
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def stand_in_replica(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers every request 200 with an empty JSON object: what the fake backend's replicas point at."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


class StandInBackend(FakeBackend):
    """The autoscaler's fake backend (replicas are records), with replica URLs of a real stand-in server."""

    def __init__(self, clock: AutoscalerClock, port: int) -> None:
        super().__init__(clock)
        self.port = port

    async def start_replica(self, entity: EntityKey, spec: EntitySpec, replica_id: str) -> ReplicaInfo:
        info = await super().start_replica(entity, spec, replica_id)
        return dataclasses.replace(info, url=f"http://127.0.0.1:{self.port}")


@dataclass
class ServedGateway:
    """A real gateway (fake backend, stand-in replicas) served by uvicorn on loopback in the test's loop."""

    gateway: Any
    clock: AutoscalerClock
    url: str
    admin: Any  # httpx.AsyncClient with the admin token

    async def create_endpoint(self, name: str) -> dict[str, Any]:
        body = {"name": name, "config": {"served_entities": [
            {"entity_name": "file:///models/propensity", "entity_version": "1"}]}}
        created = await self.admin.post("/api/2.0/serving-endpoints", json=body)
        assert created.status_code == 200, created.text
        for _ in range(250):
            endpoint: dict[str, Any] = (await self.admin.get(f"/api/2.0/serving-endpoints/{name}")).json()
            if endpoint["state"]["ready"] == "READY" and endpoint["state"]["config_update"] != "IN_PROGRESS":
                return endpoint
            await self.clock.advance(0.5)
            await asyncio.sleep(0.02)
        raise AssertionError(f"{name} did not become ready")


@asynccontextmanager
async def serving_gateway(home: Path, **security: Any) -> AsyncIterator[ServedGateway]:
    import httpx
    from pydantic import SecretStr

    from router.auth.settings import SecuritySettings
    from router.auth.tls import uvicorn_options
    from router.gateway import Gateway
    from router.settings import GatewaySettings

    with running_server(stand_in_replica) as replica_port:
        clock = AutoscalerClock()
        security.setdefault("admin_token", SecretStr(ADMIN_TOKEN))
        gateway = Gateway(GatewaySettings(home=home, rollout_timeout_s=3.0),
                          backend=StandInBackend(clock, replica_port), clock=clock,
                          security=SecuritySettings(**security))
        async with uvicorn_server(gateway.asgi, lifespan="on", log_level="error", **uvicorn_options()) as (
            port,
            _,
        ):
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url, timeout=10,
                                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
                yield ServedGateway(gateway, clock, url, admin)
