"""A real uvicorn server on loopback, run inside the test's event loop (shared by the runtime and router
tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Literal

import uvicorn

from runtime.server import bind_socket, bind_unix_socket


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
    # The listeners a replica opens (runtime.server), on a free loopback port.
    sock = bind_socket("127.0.0.1", 0)
    sockets = [sock]
    if unix_socket is not None:
        sockets.append(bind_unix_socket(unix_socket))
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
