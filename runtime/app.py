"""The replica's HTTP app: MLflow scoring and the Open Inference Protocol.

The two inference routes are the hot path of every request. A replica's server answers them below ASGI
(``ReplicaProtocol``: the HTTP protocol object hands the request to ``ReplicaApp.serve_direct``, which
answers with one write; see ``runtime.http``); ``ReplicaApp`` also serves them as plain ASGI (one pass
over the headers, no request/response objects, no middleware) for in-process use, through the same
``invocations``/``infer`` methods, so both give the same answers. Every other route (health, metadata,
404s) goes through an ordinary Starlette app. Errors become responses in exactly
one place, ``error_response``: ``{"error_code", "message"}`` with the error's status (Open Inference
Protocol routes also carry ``"error"``, which ``tritonclient`` reads).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

import runtime
from runtime.errors import InvalidInput, NotFound, PayloadTooLarge, UnsupportedMediaType, ZeroserveError
from runtime.http import ClientDisconnected, CoalescingHttpToolsProtocol, DirectExchange, DirectHandler
from runtime.payload import Payload
from runtime.protocol import mlflow as mlflow_protocol
from runtime.protocol import v2
from runtime.replica import Replica
from runtime.types import ColumnSchema, TensorSchema, TensorSpec

logger = logging.getLogger(__name__)

_JSON = "application/json"
_JSON_HEADER = (b"content-type", b"application/json")
_BINARY_HEADER = (b"content-type", b"application/octet-stream")
_HTTP_ERROR_CODES = {404: "ENDPOINT_NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
_MODELS_PREFIX = "/v2/models/"
_DISCONNECTED = "the client disconnected before sending the whole body"

# (status, headers with content-length, body): what an inference route answers.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
BodyReader = Callable[[], Awaitable[bytes]]


class _Headers:
    """The request headers the inference routes read, picked out of the ASGI scope in one pass."""

    __slots__ = ("content_encoding", "content_length", "content_type", "inference_header")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.content_type: str | None = None
        self.content_length: bytes | None = None
        self.content_encoding: bytes | None = None
        self.inference_header: str | None = None
        for name, value in raw:
            if name == b"content-type":
                self.content_type = value.decode("latin-1")
            elif name == b"content-length":
                self.content_length = value
            elif name == b"content-encoding":
                self.content_encoding = value
            elif name == b"inference-header-content-length":
                self.inference_header = value.decode("latin-1")


def _check_declared_length(headers: _Headers, limit: int) -> None:
    """413 before reading a body declared larger than ``limit`` bytes; 400 for a malformed length."""
    declared = headers.content_length
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput(f"invalid Content-Length {declared.decode('latin-1')!r}")
        if int(declared) > limit:
            raise PayloadTooLarge(f"the request body is {int(declared)} bytes; the limit is {limit}")


def _decode_body(body: bytes, headers: _Headers, limit: int) -> bytes:
    encoding = headers.content_encoding
    if encoding and encoding != b"identity":
        return _decompress(body, encoding.decode("latin-1").lower(), limit)
    return body


async def read_body(receive: Receive, headers: _Headers, limit: int) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes (before reading it when declared)."""
    _check_declared_length(headers, limit)
    message = await receive()
    if message["type"] != "http.request":
        raise InvalidInput(_DISCONNECTED)
    body: bytes = message.get("body", b"")
    if message.get("more_body", False):
        chunks, size = [body], len(body)
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise InvalidInput(_DISCONNECTED)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
    elif len(body) > limit:
        raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")
    return _decode_body(body, headers, limit)


async def read_direct_body(exchange: DirectExchange, headers: _Headers, limit: int) -> bytes:
    """``read_body`` for a request served below ASGI (see ``ReplicaProtocol``), with the same answers."""
    _check_declared_length(headers, limit)
    try:
        body = await exchange.read_body(limit, None)
    except ClientDisconnected:
        raise InvalidInput(_DISCONNECTED) from None
    return _decode_body(body, headers, limit)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")
    decompressor = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the {encoding} body is corrupt: {exc}") from None
    if len(data) > limit or decompressor.unconsumed_tail:
        raise PayloadTooLarge(f"the decompressed request body exceeds the limit of {limit} bytes")
    return data


def _answer(body: bytes, *extra: tuple[bytes, bytes]) -> Answer:
    return 200, [*extra, (b"content-length", b"%d" % len(body))], body


async def _respond(send: Send, answer: Answer) -> None:
    status, headers, body = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ReplicaApp:
    """The ASGI app of one replica."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.limit = replica.settings.max_body_bytes
        self.routes = _starlette_app(replica)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if _is_inference_path(path):
                handler = self._invocations if path == "/invocations" else self._infer
                if scope["method"] != "POST":
                    handler = self._method_not_allowed
                await self._guarded(handler, scope, receive, send)
                return
        await self.routes(scope, receive, send)

    async def _method_not_allowed(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise HTTPException(405, f"use POST for {scope['path']}", headers={"Allow": "POST"})

    async def _guarded(self, handler: Any, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await handler(scope, receive, send)
        except Exception as exc:
            response = error_response(scope["method"], scope["path"], exc)
            await response(scope, receive, send)

    async def _invocations(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _Headers(scope["headers"])
        reader = partial(read_body, receive, headers, self.limit)
        await _respond(send, await self.invocations(headers, reader))

    async def _infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _Headers(scope["headers"])
        reader = partial(read_body, receive, headers, self.limit)
        await _respond(send, await self.infer(scope["path"], headers, reader))

    async def invocations(self, headers: _Headers, read: BodyReader) -> Answer:
        """``POST /invocations`` (MLflow scoring); ``read`` returns the request body."""
        content_type = headers.content_type
        if content_type != _JSON:
            mlflow_protocol.media_type(content_type)  # 415 before anything is read

        async def receive_payload() -> Payload:
            return mlflow_protocol.decode(await read(), content_type)

        prediction = await self.replica.infer(receive_payload)
        return _answer(mlflow_protocol.encode(prediction), _JSON_HEADER)

    async def infer(self, path: str, headers: _Headers, read: BodyReader) -> Answer:
        """``POST /v2/models/{name}[/versions/{version}]/infer`` (Open Inference Protocol)."""
        replica = self.replica
        _check_model(replica, *_model_from_path(path))
        decoded: list[v2.InferRequest] = []

        async def receive_payload() -> Payload:
            decoded.append(v2.decode(await read(), headers.inference_header))
            return decoded[0].payload

        prediction = await replica.infer(receive_payload)
        body, header_length = v2.encode(
            prediction, decoded[0], model_name=replica.name, model_version=replica.version
        )
        if header_length is not None:
            return _answer(body, _BINARY_HEADER, (b"inference-header-content-length", b"%d" % header_length))
        return _answer(body, _JSON_HEADER)

    async def serve_direct(self, exchange: DirectExchange) -> None:
        """Answer an inference request below ASGI (``ReplicaProtocol``): the same checks, answers and
        errors as ``__call__``, without uvicorn's ASGI cycle."""
        path: str = exchange.scope["path"]
        headers = _Headers(exchange.scope["headers"])
        reader = partial(read_direct_body, exchange, headers, self.limit)
        try:
            if path == "/invocations":
                answer = await self.invocations(headers, reader)
            else:
                answer = await self.infer(path, headers, reader)
        except Exception as exc:
            response = error_response("POST", path, exc)
            answer = response.status_code, response.raw_headers, bytes(response.body)
        await exchange.respond(*answer)


class ReplicaProtocol(CoalescingHttpToolsProtocol):
    """uvicorn's httptools protocol (responses in one write) that serves ``POST`` to the inference routes
    below ASGI, through ``ReplicaApp.serve_direct``; every other request goes to the ASGI app.

    Draining (``shutdown``), uvicorn closes an idle keep-alive connection at once. A router that picked
    that connection for a request just then — one that has not heard yet that the replica is going: a
    pod deleted, the watch event still on its way — sees it close under the request it wrote and cannot
    tell whether the replica ran it, so it must answer its client with an error. Here an idle connection
    stays open ``linger_s`` more: a request that arrives meanwhile is served and answered with
    ``Connection: close``; one that stays idle is closed at the end (or when the router closes it, as the
    gateway does once it has drained the replica)."""

    replica_app: ReplicaApp
    linger_s: float = 1.0
    _closing = False  # draining: the next answer on this connection is its last
    _linger: asyncio.TimerHandle | None = None

    def direct_handler(self, path: str) -> DirectHandler | None:
        return self.replica_app.serve_direct if _is_inference_path(path) else None

    def shutdown(self) -> None:
        self._closing = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False  # uvicorn's: close after this answer
        elif self.linger_s > 0 and not self.transport.is_closing():
            self._linger = self.loop.call_later(self.linger_s, self._end_linger)
        else:
            self.transport.close()

    def _end_linger(self) -> None:
        self._linger = None
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.close()
        # else: a request came during the linger; its answer closes the connection (see on_headers_complete)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._closing and self.cycle is not None:
            self.cycle.keep_alive = False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)


def replica_protocol(app: ReplicaApp, linger_s: float = 1.0) -> type[ReplicaProtocol]:
    """The protocol class a replica's uvicorn server runs, serving ``app``; draining, idle connections
    stay open ``linger_s`` for a request already on its way (see ``ReplicaProtocol``)."""
    return type("ReplicaProtocol", (ReplicaProtocol,), {"replica_app": app, "linger_s": linger_s})


def _is_inference_path(path: str) -> bool:
    """``/invocations`` or ``/v2/models/.../infer`` (``_model_from_path`` checks the middle)."""
    return path == "/invocations" or (path.startswith(_MODELS_PREFIX) and path.endswith("/infer"))


def _model_from_path(path: str) -> tuple[str, str | None]:
    """``/v2/models/{name}[/versions/{version}]/infer`` -> (name, version)."""
    parts = path[len(_MODELS_PREFIX) : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    raise NotFound(f"no route for POST {path}")


def _check_model(replica: Replica, name: str, version: str | None) -> None:
    if name != replica.name:
        raise NotFound(f"model {name!r} is not served here; this replica serves {replica.name!r}")
    if version is not None and replica.version is not None and version != replica.version:
        raise NotFound(f"model {name!r} has no version {version!r}; served: {replica.version!r}")


def _json(document: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(document), status_code=status_code, media_type=_JSON)


def _starlette_app(replica: Replica) -> Starlette:
    def check(request: Request) -> None:
        _check_model(replica, request.path_params["name"], request.path_params.get("version"))

    async def model_metadata(request: Request) -> Response:
        check(request)
        return _json(_metadata(replica))

    async def model_ready(request: Request) -> Response:
        check(request)
        return _json({"name": replica.name, "ready": replica.ready}, 200 if replica.ready else 503)

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        return _json({"ready": replica.ready}, 200 if replica.ready else 503)

    async def ping(request: Request) -> Response:
        return Response("\n", status_code=200 if replica.ready else 503, media_type=_JSON)

    async def version(request: Request) -> Response:
        return Response(runtime.__version__, media_type="text/plain")

    async def server_metadata(request: Request) -> Response:
        extensions = ["binary_tensor_data"]
        return _json({"name": "zeroserve", "version": runtime.__version__, "extensions": extensions})

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/health", ping, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route(model, model_metadata, methods=["GET"]),
        Route(versioned, model_metadata, methods=["GET"]),
        Route(f"{model}/ready", model_ready, methods=["GET"]),
        Route(f"{versioned}/ready", model_ready, methods=["GET"]),
    ]

    async def handler(request: Request, exc: Exception) -> Response:
        return error_response(request.method, request.url.path, exc)

    handlers: dict[Any, Any] = {ZeroserveError: handler, HTTPException: handler, Exception: handler}
    return Starlette(routes=routes, exception_handlers=handlers)


def _metadata(replica: Replica) -> dict[str, Any]:
    schema = replica.model.input_schema
    if isinstance(schema, TensorSchema):
        inputs = v2.tensor_metadata(schema.inputs)
    elif isinstance(schema, ColumnSchema):
        columns = tuple(TensorSpec(column.name, column.dtype, (-1,)) for column in schema.columns)
        inputs = v2.tensor_metadata(columns)
    else:
        inputs = []
    document: dict[str, Any] = {
        "name": replica.name,
        "versions": [replica.version] if replica.version is not None else [],
        "platform": replica.model.flavor,
        "inputs": inputs,
        "outputs": v2.tensor_metadata(replica.model.output_specs),
    }
    if replica.batching:
        document["parameters"] = {"max_batch_size": replica.settings.max_batch_size}
    return document


def error_response(method: str, path: str, exc: Exception) -> Response:
    """The one place where an error becomes an HTTP response."""
    if isinstance(exc, ZeroserveError):
        status, code, message, headers = exc.status_code, exc.error_code, exc.message, exc.headers
    elif isinstance(exc, HTTPException):
        status, message, headers = exc.status_code, exc.detail, dict(exc.headers or {})
        code = _HTTP_ERROR_CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")
        if status == 404:
            message = f"no route for {method} {path}"
    else:
        logger.error("unhandled error on %s %s", method, path, exc_info=exc)
        status, code, message, headers = 500, "INTERNAL_ERROR", f"internal error: {type(exc).__name__}", {}
    document = {"error_code": code, "message": message}
    if path.startswith("/v2"):
        document["error"] = message
    return Response(orjson.dumps(document), status_code=status, media_type=_JSON, headers=headers)


def build_app(replica: Replica) -> ReplicaApp:
    return ReplicaApp(replica)
