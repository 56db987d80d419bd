"""A tool call's internal request: what it carries from the MCP request, and what comes back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from router.mcp.dispatch import dispatch
from router.observability.logging import REQUEST_ID_SCOPE_KEY

OUTER: dict[str, Any] = {
    "type": "http",
    "method": "POST",
    "path": "/mcp",
    "scheme": "https",
    "client": ("203.0.113.7", 51000),
    "server": ("10.0.0.2", 8484),
    "headers": [
        (b"host", b"models.example.com"),
        (b"authorization", b"Bearer zs_abc_secret"),
        (b"user-agent", b"agent/1.0"),
        (b"cookie", b"session=1"),
        (b"x-forwarded-for", b"198.51.100.1"),
        (b"mcp-session-id", b"xyz"),
        (b"content-type", b"application/json"),
    ],
    REQUEST_ID_SCOPE_KEY: "req-42",
}


class Recorder:
    """An ASGI app that records the request it gets and answers with a fixed JSON body."""

    def __init__(self) -> None:
        self.scope: Scope = {}
        self.body = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        message = await receive()
        self.body = message["body"]
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"application/json"), (b"served-model-name", b"m-1")]})
        await send({"type": "http.response.body", "body": b'{"predictions": ', "more_body": True})
        await send({"type": "http.response.body", "body": b"[1]}"})


async def test_the_inner_request_carries_the_callers_identity_and_request_id() -> None:
    app = Recorder()
    response = await dispatch(app, OUTER, "POST", "/serving-endpoints/m/invocations", b'{"inputs": [1]}')
    headers = dict(app.scope["headers"])
    assert headers[b"authorization"] == b"Bearer zs_abc_secret"
    assert headers[b"host"] == b"models.example.com" and headers[b"user-agent"] == b"agent/1.0"
    assert headers[b"x-request-id"] == b"req-42"
    assert headers[b"content-type"] == b"application/json" and headers[b"content-length"] == b"15"
    # Cookies, proxy headers and MCP transport headers belong to the outer request only.
    assert not {b"cookie", b"x-forwarded-for", b"mcp-session-id"} & set(headers)
    assert app.scope["client"] == ("203.0.113.7", 51000) and app.scope["scheme"] == "https"
    assert app.scope["path"] == "/serving-endpoints/m/invocations" and app.scope["method"] == "POST"
    assert app.body == b'{"inputs": [1]}'
    assert response.status == 201 and response.json() == {"predictions": [1]}
    assert response.header(b"served-model-name") == "m-1" and response.header(b"retry-after") is None


async def test_the_caller_stays_connected_until_the_call_is_cancelled() -> None:
    second_receive: list[Message] = []

    async def waits_for_a_disconnect(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the body
        second_receive.append(await receive())  # what the data plane does while a request is queued

    call = asyncio.create_task(dispatch(waits_for_a_disconnect, OUTER, "POST", "/x", b"{}"))
    await asyncio.sleep(0.05)
    assert not call.done() and second_receive == []
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
