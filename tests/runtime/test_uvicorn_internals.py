"""The uvicorn internals ``runtime/http.py`` and ``router/auth/tls.py`` build on: if a uvicorn release
moves one, this fails naming it, instead of replicas failing on their first request."""

from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState


async def _noop_app(scope: object, receive: object, send: object) -> None:
    return None


async def test_the_protocol_internals_we_use_are_there() -> None:
    assert callable(getattr(HttpToolsProtocol, "_start_asgi_task", None)), (
        f"uvicorn {uvicorn.__version__}: HttpToolsProtocol._start_asgi_task is gone; runtime/http.py"
        " starts each request's ASGI task through it")
    config = uvicorn.Config(_noop_app, http="httptools", lifespan="off", log_config=None)
    config.load()
    protocol = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={},
                                 _loop=asyncio.get_running_loop())
    for name in ("pipeline", "cycle", "app", "flow", "transport"):
        assert hasattr(protocol, name), (
            f"uvicorn {uvicorn.__version__}: HttpToolsProtocol.{name} is gone; runtime/http.py reads it")
    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE

    assert FlowControl is not None and STATUS_LINE[200].startswith(b"HTTP/1.1 200")
