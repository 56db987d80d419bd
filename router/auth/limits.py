"""Limits that keep bad or slow input from hurting the gateway: body size, body and request time, JSON depth.

``LimitsMiddleware`` (pure ASGI, outermost) enforces, once a request is admitted (a declared
``Content-Length`` over the limit is refused by admission, ``router.auth.admission``, before a byte is read):

- the body size: a chunked body, or one whose ``Content-Length`` lies, is counted as it arrives and
  refused (413) once it passes the limit;
- the body read time: each chunk must arrive within ``body_timeout_s`` (a client that announces 1 MB
  and sends 10 bytes gets 408 instead of holding a task forever);
- the request time: an app that has not started its response after ``request_timeout_s`` is cancelled
  and the client gets 504; once a response streams, it is left alone;
- the last line of defence: an unhandled exception becomes a 500 JSON error without a stack trace
  (unless ``debug``), logged here with its trace.

Header sizes are bounded by the HTTP parser (see ``router.auth.tls.uvicorn_limits``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import traceback
from typing import Any

import numpy as np
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.auth._respond import send_error
from router.auth.admission import CONNECTION_CLOSE, body_too_large
from router.errors import RequestTimeout, UpstreamTimeout
from runtime.errors import InvalidInput, PayloadTooLarge, ZeroserveError

log = logging.getLogger("zeroserve.limits")

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_JSON_DEPTH = 64


class LimitsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        body_timeout_s: float = 30.0,
        request_timeout_s: float = 300.0,
        debug: bool = False,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.request_timeout_s = request_timeout_s
        self.debug = debug

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0
        body_done = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                # After the body, receive() only reports disconnects, which may legitimately take forever.
                return await receive()
            try:
                # asyncio.timeout arms one timer handle; wait_for would wrap receive() in a new task
                # on every call, which showed as a measurable share of the router's CPU per request.
                async with asyncio.timeout(self.body_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(
                    f"Request body did not arrive within {self.body_timeout_s:g} s"
                    " (is Content-Length larger than the body sent?)."
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise body_too_large(self.max_body_bytes)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                deadline.reschedule(None)
            await send(message)

        try:
            async with asyncio.timeout(self.request_timeout_s) as deadline:
                await self.app(scope, limited_receive, tracking_send)
        except TimeoutError:
            if response_started or not deadline.expired():
                raise
            await send_error(
                send, UpstreamTimeout(f"The request took longer than {self.request_timeout_s:g} s."),
                path=scope["path"],
            )
        except ZeroserveError as error:
            # Raised by limited_receive where the app did not turn it into a response itself.
            if response_started:
                raise
            extra = CONNECTION_CLOSE if isinstance(error, PayloadTooLarge | RequestTimeout) else ()
            await send_error(send, error, extra, path=scope["path"])
        except Exception as exc:
            if response_started:
                raise  # the server logs it; the client already has its answer
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            message = "Internal error."
            if self.debug:
                message += "\n" + "".join(traceback.format_exception(exc))
            await send_error(send, ZeroserveError(message), path=scope["path"])


# A JSON string literal; only applied to text orjson has already accepted as JSON.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(body: bytes) -> int:
    """The nesting depth of valid JSON text (``[]`` is 1, ``[[1]]`` is 2, a scalar 0), in vectorised time."""
    if body.count(b"[") + body.count(b"{") == 0:
        return 0
    structure = _STRING.sub(b'""', body) if b'"' in body else body
    chars = np.frombuffer(structure, dtype=np.uint8)
    steps = (chars == ord("[")).astype(np.int32) + (chars == ord("{"))
    steps -= (chars == ord("]")).astype(np.int32) + (chars == ord("}"))
    return int(np.cumsum(steps).max())


def loads_json(body: bytes, *, max_depth: int = DEFAULT_MAX_JSON_DEPTH, what: str = "request body") -> Any:
    """Parse a JSON request body: 400 for invalid JSON, text that is not UTF-8, or nesting deeper than
    ``max_depth`` (deep nesting makes every later recursive walk of the value a stack hazard)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = "it is not valid UTF-8" if "UTF-8" in str(exc) else f"it is not valid JSON ({exc.msg})"
        if "depth" in str(exc):
            reason = f"it is nested deeper than {max_depth} levels"
        raise InvalidInput(f"Cannot parse the {what}: {reason}.") from None
    # Counting brackets bounds the depth from above, so small documents skip the exact count.
    if body.count(b"[") + body.count(b"{") > max_depth and json_depth(body) > max_depth:
        raise InvalidInput(f"Cannot parse the {what}: it is nested deeper than {max_depth} levels.")
    return value
