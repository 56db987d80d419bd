"""The one rendering of a ``ZeroserveError`` as an HTTP answer, whichever layer refused the request.

The front door's ASGI middleware (which runs outside the app's exception handler), the app's handler and
the query path below ASGI all answer through ``error_answer``, so a client cannot tell which layer
refused it.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from starlette.types import Send

from runtime.errors import ZeroserveError

# An answer as status, raw headers and body: what the query path writes, and what ``send_error`` sends.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
_JSON = (b"content-type", b"application/json")


def error_body(error: ZeroserveError, path: str) -> bytes:
    """``{"error_code", "message"}``, plus ``error`` on Open Inference Protocol paths (its clients read
    the message there)."""
    payload: dict[str, str] = error.to_dict()
    if path.startswith("/v2/") or path == "/v2":
        payload["error"] = error.message
    return orjson.dumps(payload)


def error_answer(error: ZeroserveError, path: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> Answer:
    """``error``'s status, headers (its own, then ``extra``) and body for a request to ``path``."""
    body = error_body(error, path)
    headers = [_JSON, (b"content-length", b"%d" % len(body))]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in error.headers.items()]
    headers += extra
    return error.status_code, headers, body


async def send_error(
    send: Send, error: ZeroserveError, extra: Iterable[tuple[bytes, bytes]] = (), *, path: str
) -> None:
    status, headers, body = error_answer(error, path, extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
