"""``/mcp`` on the gateway: the route, the lazily started MCP service, and its shutdown.

The SDK takes about a second to import, so the service is built on the first request to ``/mcp``
(the import runs in a thread; the event loop keeps serving queries meanwhile). Its session manager
runs in a task of its own for the rest of the gateway's life: the manager's task group must be
entered and left by one task, and ``aclose`` (called by the gateway's shutdown) ends it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
from typing import TYPE_CHECKING

import orjson
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.api.views import StateOf
from router.mcp.hosts import host_policy
from router.mcp.signatures import SignatureCache
from router.mcp.tools import ToolCatalog
from router.state.endpoints import EndpointStore

if TYPE_CHECKING:
    from router.mcp.server import McpService

log = logging.getLogger("zeroserve.mcp")

MCP_PATH = "/mcp"


_ERROR_CODES = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "RESOURCE_DOES_NOT_EXIST"}


def plain_errors_as_json(send: Send) -> Send:
    """The SDK refuses some requests (a missing Content-Type, an unacceptable Accept, a wrong Host) with
    a bare text body and no Content-Type; this renders them in the gateway's one error shape, so that
    every 4xx a client gets is ``{"error_code", "message"}`` JSON. JSON-RPC answers pass unchanged."""
    held: Message | None = None
    text = b""

    async def sending(message: Message) -> None:
        nonlocal held, text
        if message["type"] == "http.response.start":
            headers = message.get("headers", [])
            if message["status"] >= 400 and not any(name.lower() == b"content-type" for name, _ in headers):
                held = message
                return
        elif held is not None and message["type"] == "http.response.body":
            text += message.get("body", b"")
            if message.get("more_body", False):
                return
            status = int(held["status"])
            body = orjson.dumps({"error_code": _ERROR_CODES.get(status, "BAD_REQUEST"),
                                 "message": text.decode("utf-8", "replace").strip() or f"HTTP {status}"})
            kept = [(name, value) for name, value in held.get("headers", [])
                    if name.lower() != b"content-length"]
            await send({**held, "headers": [*kept, (b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await send(message)

    return sending


class McpMount:
    """The Model Context Protocol (Streamable HTTP): serving endpoints as tools for AI agents.

    Each endpoint the caller may query is a tool whose input schema is its model's signature, plus
    ``list_endpoints`` and ``get_endpoint_status``.
    """

    def __init__(
        self,
        *,
        store: EndpointStore,
        state_of: StateOf,
        allowed_hosts: list[str],
        listen_host: str,
        max_body_bytes: int,
        version: str,
        signatures: SignatureCache | None = None,
    ) -> None:
        self.store = store
        self.state_of = state_of
        self.hosts = host_policy(allowed_hosts, listen_host, socket.gethostname())
        self.max_body_bytes = max_body_bytes
        self.version = version
        self.catalog = ToolCatalog(store, signatures or SignatureCache())
        self._gateway_app: ASGIApp | None = None
        self._service: McpService | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closed = False

    def bind(self, gateway_app: ASGIApp) -> None:
        """The gateway's outermost ASGI app, through which tool calls are dispatched."""
        self._gateway_app = gateway_app

    def routes(self) -> list[BaseRoute]:
        return [Route(MCP_PATH, self, methods=["GET", "POST", "DELETE"])]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = await self._started()
        await service.manager.handle_request(scope, receive, plain_errors_as_json(send))

    async def _started(self) -> McpService:
        if self._service is not None:
            return self._service
        async with self._lock:
            if self._service is None:
                if self._closed:
                    raise RuntimeError("the gateway is shutting down")
                self._service = await self._start()
        return self._service

    async def _start(self) -> McpService:
        sdk_logger = logging.getLogger("mcp")
        if sdk_logger.level == logging.NOTSET:
            # The SDK logs every stateless request at INFO; the gateway's access log already has them.
            sdk_logger.setLevel(logging.WARNING)
        module = await asyncio.to_thread(importlib.import_module, "router.mcp.server")
        service: McpService = module.McpService(
            store=self.store,
            state_of=self.state_of,
            catalog=self.catalog,
            gateway_app=self._app,
            hosts=self.hosts,
            max_body_bytes=self.max_body_bytes,
            version=self.version,
        )
        running = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(service, running), name="mcp-session-manager")
        await running
        log.info("MCP server started at %s (%s)", MCP_PATH,
                 "hosts " + ", ".join(self.hosts.hosts) if self.hosts.check else "any host")
        return service

    async def _run(self, service: McpService, running: asyncio.Future[None]) -> None:
        try:
            async with service.manager.run():
                running.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not running.done():
                running.set_exception(exc)
            raise

    def _app(self) -> ASGIApp:
        if self._gateway_app is None:
            raise RuntimeError("McpMount.bind() was not called with the gateway's app")
        return self._gateway_app

    async def aclose(self) -> None:
        """End the session manager (in-flight MCP requests are cancelled) and pending signature fetches."""
        self._closed = True
        self._stop.set()
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        await self.catalog.signatures.aclose()

