"""Fixtures for the front door's tests: a fake clock, an in-memory endpoint directory, a front door over
a real SQLite database, and a real uvicorn server on loopback for the tests that need a socket."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from router.auth.frontdoor import FrontDoor
from router.auth.settings import SecuritySettings
from router.auth.types import EndpointRef
from router.db import Database

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
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "state.db")
    try:
        yield database
    finally:
        database.close()


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
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off", **options)
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
