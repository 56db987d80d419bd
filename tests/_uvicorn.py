"""A real uvicorn server on loopback, run inside the test's event loop (shared by the runtime and router
tests)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any, Literal

import uvicorn


def bound_socket() -> socket.socket:
    """A TCP socket bound to a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def uvicorn_server(
    app: Any,
    *,
    lifespan: Literal["on", "off"] = "off",
    unix_socket: str | None = None,
    **options: Any,
) -> AsyncIterator[tuple[int, uvicorn.Server]]:
    """Serve the ASGI ``app`` for the duration of the block; yields (port, server). ``options`` go to
    ``uvicorn.Config`` (``http``: the protocol class, a replica's or the gateway's); ``unix_socket``: also
    listen there."""
    sock = bound_socket()
    sockets = [sock]
    if unix_socket is not None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(unix_socket)
        sockets.append(listener)
    options = {"log_level": "warning", "access_log": False, **options}
    config = uvicorn.Config(app, lifespan=lifespan, **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=sockets))
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            raise RuntimeError("test server did not start")
        yield sock.getsockname()[1], server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)
        for listener in sockets:
            listener.close()
