"""Real HTTP servers on loopback for the data-plane tests, run inside the test's event loop.

``EchoReplica`` is a uvicorn server speaking the replica routes the router forwards to (it echoes
bodies so that pass-through can be checked byte for byte, and can be told to be slow, fail, or be
unhealthy); ``RawServer`` answers with exactly the bytes a test scripts, for protocol edge cases that
no well-behaved server produces.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from starlette.types import Receive, Scope, Send

from autoscaler.types import EntityKey, ReplicaInfo
from runtime.server import bind_socket
from tests._uvicorn import uvicorn_server


async def read_body(receive: Receive) -> bytes:
    """An ASGI request's whole body."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


@dataclass
class EchoReplica:
    """A stand-in replica: a real uvicorn server with scriptable behaviour."""

    name: str
    capacity: int = 4
    delay_s: float = 0.0
    healthy: bool = True
    port: int = 0
    unix_socket: str | None = None  # also served there when set
    requests: int = 0
    max_in_flight: int = 0
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    _in_flight: int = 0

    def info(self, entity: EntityKey) -> ReplicaInfo:
        return ReplicaInfo(
            self.name, entity, f"http://127.0.0.1:{self.port}", self.capacity, unix_socket=self.unix_socket
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        path: str = scope["path"]
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        query = dict(part.split("=", 1) for part in scope["query_string"].decode().split("&") if "=" in part)
        if path == "/v2/health/ready":
            await _answer(send, 200 if self.healthy else 503, b"", [])
            return
        self.requests += 1
        self.seen_headers.append(headers)
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            delay = float(query.get("sleep", self.delay_s))
            if delay:
                await asyncio.sleep(delay)
        finally:
            self._in_flight -= 1
        client = scope.get("client")  # None over a Unix socket
        extra = [
            (b"x-replica", self.name.encode()),
            (b"x-client-port", str(client[1]).encode() if client else b"unix"),
            (b"x-path", path.encode()),
        ]
        if "status" in query:
            error = {"error_code": "BAD_REQUEST", "message": f"model says no ({self.name})"}
            await _answer(send, int(query["status"]), orjson.dumps(error), extra)
        elif path.startswith("/v2/models/") and scope["method"] == "GET":
            await _answer(send, 200, orjson.dumps({"name": path.split("/")[3]}), extra)
        else:
            # Echo: same bytes, same content type, and the binary-tensor header if there was one.
            for name in ("content-type", "inference-header-content-length"):
                if name in headers:
                    extra.append((name.encode(), headers[name].encode()))
            await _answer(send, 200, body, extra)


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def serving(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    *,
    http: str | type[asyncio.Protocol] = "httptools",
    unix_socket: str | None = None,
) -> AsyncIterator[int]:
    """Run an ASGI app with uvicorn on a loopback port for the duration of the block (``http``: the
    protocol class, e.g. the gateway's query protocol; ``unix_socket``: also listen there)."""
    async with uvicorn_server(app, http=http, unix_socket=unix_socket) as (port, _):
        yield port


@contextlib.asynccontextmanager
async def echo_replica(name: str, **kwargs: object) -> AsyncIterator[EchoReplica]:
    replica = EchoReplica(name, **kwargs)  # type: ignore[arg-type]
    async with serving(replica, unix_socket=replica.unix_socket) as port:
        replica.port = port
        yield replica


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[int]:
    """A TCP server whose every connection runs ``script``."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request with a Content-Length body (all the router's client sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


def free_port() -> int:
    """A port nobody listens on (bound and released)."""
    with bind_socket("127.0.0.1", 0) as sock:
        return int(sock.getsockname()[1])
