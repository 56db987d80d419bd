"""Error answers sent by the front door's ASGI middleware, which runs outside the app's exception handler.

They carry the same ``{"error_code", "message"}`` body as every other zeroserve error, built from the
same ``ZeroserveError`` object, so a client cannot tell which layer refused it.
"""

from __future__ import annotations

import orjson
from starlette.types import Send

from runtime.errors import ZeroserveError


def error_body(error: ZeroserveError, path: str) -> bytes:
    """``{"error_code", "message"}``, plus ``error`` on Open Inference Protocol paths (its clients read
    the message there): the one rendering of an error, whichever layer refused the request."""
    payload: dict[str, str] = error.to_dict()
    if path.startswith("/v2/") or path == "/v2":
        payload["error"] = error.message
    return orjson.dumps(payload)


async def send_error(
    send: Send, error: ZeroserveError, extra_headers: dict[str, str] | None = None, *, path: str
) -> None:
    body = error_body(error, path)
    headers = {**error.headers, **(extra_headers or {})}
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
