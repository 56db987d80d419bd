"""A tool call as an HTTP request through the gateway's own ASGI stack.

A tool call must be what the same query over HTTP would be: authenticated with the caller's bearer
token, audited, charged to the endpoint's rate limits, routed by traffic share, held while the entity
scales from zero, counted in the metrics and written to the inference table. Rather than repeat any of
that, the call becomes a request to ``POST /serving-endpoints/{name}/invocations`` handed to the
gateway's outermost ASGI app, carrying the MCP request's credentials, client address and request id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import ASGIApp, Message

from router.observability.logging import REQUEST_ID_SCOPE_KEY

# What the inner request keeps of the MCP request's headers: who is calling and from what.
_FORWARDED = frozenset({b"authorization", b"host", b"user-agent"})


@dataclass(slots=True)
class InternalResponse:
    status: int = 500
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def json(self) -> Any:
        return orjson.loads(self.body)

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None


async def dispatch(
    app: ASGIApp, outer: Mapping[str, Any], method: str, path: str, body: bytes = b""
) -> InternalResponse:
    """Run ``method path`` (JSON ``body``) through ``app`` on behalf of the MCP request ``outer``."""
    headers = [(name, value) for name, value in outer.get("headers", ()) if name in _FORWARDED]
    request_id = outer.get(REQUEST_ID_SCOPE_KEY)
    if request_id:
        headers.append((b"x-request-id", str(request_id).encode("ascii")))
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": outer.get("http_version", "1.1"),
        "method": method,
        "scheme": outer.get("scheme", "http"),
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        # Already resolved by the outer request's trusted-proxy step: the inner one sees the real client.
        "client": outer.get("client"),
        "server": outer.get("server"),
        "state": dict(outer.get("state") or {}),
    }
    response = InternalResponse()
    body_sent = False
    # The caller stays connected until this call ends (or is cancelled with the MCP request); the
    # data plane listens on receive() for a disconnect while the request waits for a replica.
    until_cancelled = asyncio.Event()  # never set

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await until_cancelled.wait()
        return {"type": "http.disconnect"}

    chunks: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    response.body = b"".join(chunks)
    return response
