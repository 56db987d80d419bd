"""The replica's HTTP app: MLflow scoring and the Open Inference Protocol on one Starlette app.

Errors are turned into responses in exactly one place, ``_error_response``: ``{"error_code",
"message"}`` with the error's status (Open Inference Protocol routes also carry ``"error"``, which
``tritonclient`` reads).
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

import runtime
from runtime.errors import InvalidInput, NotFound, PayloadTooLarge, UnsupportedMediaType, ZeroserveError
from runtime.payload import Payload
from runtime.protocol import mlflow as mlflow_protocol
from runtime.protocol import v2
from runtime.replica import Replica
from runtime.types import ColumnSchema, TensorSchema, TensorSpec

logger = logging.getLogger(__name__)

_JSON = "application/json"
_HTTP_ERROR_CODES = {404: "ENDPOINT_NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


def _json(document: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(document), status_code=status_code, media_type=_JSON)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes (before reading it when declared)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput(f"invalid Content-Length {declared!r}")
        if int(declared) > limit:
            raise PayloadTooLarge(f"the request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise InvalidInput("the client disconnected before sending the whole body") from None
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = request.headers.get("content-encoding")
    if encoding and encoding != "identity":
        body = _decompress(body, encoding.lower(), limit)
    return body


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


def build_app(replica: Replica) -> Starlette:
    limit = replica.settings.max_body_bytes

    async def invocations(request: Request) -> Response:
        content_type = request.headers.get("content-type")
        mlflow_protocol.media_type(content_type)  # 415 before anything is read

        async def receive() -> Payload:
            return mlflow_protocol.decode(await read_body(request, limit), content_type)

        prediction = await replica.infer(receive)
        return Response(mlflow_protocol.encode(prediction), media_type=_JSON)

    async def infer(request: Request) -> Response:
        _check_model(request)
        decoded: list[v2.InferRequest] = []

        async def receive() -> Payload:
            body = await read_body(request, limit)
            decoded.append(v2.decode(body, request.headers.get(v2.HEADER_LENGTH)))
            return decoded[0].payload

        prediction = await replica.infer(receive)
        body, headers = v2.encode(
            prediction, decoded[0], model_name=replica.name, model_version=replica.version
        )
        media_type = "application/octet-stream" if headers else _JSON
        return Response(body, media_type=media_type, headers=headers)

    def _check_model(request: Request) -> None:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        if name != replica.name:
            raise NotFound(f"model {name!r} is not served here; this replica serves {replica.name!r}")
        if version is not None and replica.version is not None and version != replica.version:
            raise NotFound(f"model {name!r} has no version {version!r}; served: {replica.version!r}")

    async def model_metadata(request: Request) -> Response:
        _check_model(request)
        return _json(_metadata(replica))

    async def model_ready(request: Request) -> Response:
        _check_model(request)
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
        return _json(
            {"name": "zeroserve", "version": runtime.__version__, "extensions": ["binary_tensor_data"]}
        )

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/invocations", invocations, methods=["POST"]),
        Route(f"{model}/infer", infer, methods=["POST"]),
        Route(f"{versioned}/infer", infer, methods=["POST"]),
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
    handlers: dict[Any, Any] = {
        ZeroserveError: _error_response,
        HTTPException: _error_response,
        Exception: _error_response,
    }
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.replica = replica
    return app


def _metadata(replica: Replica) -> dict[str, Any]:
    schema = replica.model.input_schema
    if isinstance(schema, TensorSchema):
        inputs = v2.tensor_metadata(schema.inputs)
    elif isinstance(schema, ColumnSchema):
        inputs = v2.tensor_metadata(
            tuple(TensorSpec(column.name, column.dtype, (-1,)) for column in schema.columns)
        )
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


async def _error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ZeroserveError):
        status, code, message, headers = exc.status_code, exc.error_code, exc.message, exc.headers
    elif isinstance(exc, HTTPException):
        status, message, headers = exc.status_code, exc.detail, dict(exc.headers or {})
        code = _HTTP_ERROR_CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")
        if status == 404:
            message = f"no route for {request.method} {request.url.path}"
    else:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        status, code, message, headers = 500, "INTERNAL_ERROR", f"internal error: {type(exc).__name__}", {}
    document = {"error_code": code, "message": message}
    if request.url.path.startswith("/v2"):
        document["error"] = message
    return Response(orjson.dumps(document), status_code=status, media_type=_JSON, headers=headers)
