"""Bad input against a real uvicorn server: oversized, chunked, lying, slow, deeply nested, not UTF-8.
Every case must get a clean 4xx/5xx JSON answer and leave the server answering the next request."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from router.auth.admission import Admission, AdmissionMiddleware
from router.auth.limits import LimitsMiddleware, json_depth, loads_json
from router.auth.tls import uvicorn_options
from router.dataplane.plane import error_response
from runtime.errors import InvalidInput, ZeroserveError
from tests.router.auth.conftest import running_server

LIMIT = 1000


async def echo(request: Request) -> Response:
    value = loads_json(await request.body(), max_depth=8)
    return JSONResponse({"type": type(value).__name__})


async def slow(request: Request) -> Response:
    await asyncio.sleep(5)
    return Response("late")


async def boom(request: Request) -> Response:
    raise RuntimeError("database password is hunter2")


async def healthz(request: Request) -> Response:
    return Response("ok")


def make_app(debug: bool = False) -> LimitsMiddleware:
    starlette_app = Starlette(
        routes=[Route("/echo", echo, methods=["POST"]), Route("/slow", slow), Route("/boom", boom),
                Route("/healthz", healthz)],
        exception_handlers={ZeroserveError: error_response},
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # An error outside any Starlette app (whose own error middleware answers a plain-text 500).
        if scope["type"] == "http" and scope["path"] == "/boom-outside":
            raise RuntimeError("database password is hunter2")
        await starlette_app(scope, receive, send)

    # As the front door stacks them: a declared length over the limit is refused by admission.
    admitted = AdmissionMiddleware(app, Admission(front_door=None, tokens=None, max_body_bytes=LIMIT))
    return LimitsMiddleware(admitted, max_body_bytes=LIMIT, body_timeout_s=0.3, request_timeout_s=1.0,
                            debug=debug)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with running_server(make_app(), **uvicorn_options()) as server_port:
        yield server_port


def raw_exchange(port: int, data: bytes, *, wait_s: float = 3.0, idle_s: float = 0.5) -> bytes:
    """Send raw bytes; read until the server closes, or ``idle_s`` passes without data after the first."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                sock.settimeout(idle_s)
        except TimeoutError:
            pass
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def assert_healthy(port: int) -> None:
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200


def post(port: int, content: bytes | Iterator[bytes], **headers: str) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}/echo", content=content, headers=headers, timeout=5)


def test_body_within_the_limit_passes(port: int) -> None:
    response = post(port, b'{"a": [1, 2]}')
    assert response.status_code == 200 and response.json() == {"type": "dict"}


def test_oversized_by_content_length_is_refused_before_reading(port: int) -> None:
    response = post(port, b"x" * (LIMIT + 1))
    assert response.status_code == 413
    assert response.json()["error_code"] == "REQUEST_TOO_LARGE"
    assert_healthy(port)


def test_oversized_chunked_body_is_refused(port: int) -> None:
    response = post(port, iter([b"[" + b"1," * 300, b"1," * 300, b"1]"]))  # no Content-Length: chunked
    assert response.status_code == 413
    assert_healthy(port)


def test_body_shorter_than_its_content_length_times_out(port: int) -> None:
    response = raw_exchange(port, b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 500\r\n\r\n{\"a\": 1}")
    assert status_of(response) == 408
    assert b"REQUEST_TIMEOUT" in response
    assert_healthy(port)


def test_body_longer_than_its_content_length_does_not_smuggle_a_request(port: int) -> None:
    # The extra bytes are parsed as the start of a next request, which is garbage: a clean 400, and the
    # connection is closed rather than left in an unknown state.
    request = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}GARBAGE\r\n\r\n"
    response = raw_exchange(port, request)
    assert b"HTTP/1.1 400" in response
    assert b"HTTP/1.1 5" not in response
    assert_healthy(port)


def test_request_timeout_answers_504(port: int) -> None:
    response = httpx.get(f"http://127.0.0.1:{port}/slow", timeout=5)
    assert response.status_code == 504
    assert response.json()["error_code"] == "DEADLINE_EXCEEDED"
    assert_healthy(port)


def test_unhandled_error_is_500_without_trace_or_secret(port: int) -> None:
    response = httpx.get(f"http://127.0.0.1:{port}/boom-outside", timeout=5)
    assert response.status_code == 500
    assert response.json() == {"error_code": "INTERNAL_ERROR", "message": "Internal error."}
    inside = httpx.get(f"http://127.0.0.1:{port}/boom", timeout=5)  # Starlette's own answer, debug off
    assert inside.status_code == 500 and "hunter2" not in inside.text and "Traceback" not in inside.text
    assert_healthy(port)


def test_debug_shows_the_trace() -> None:
    with running_server(make_app(debug=True), **uvicorn_options()) as debug_port:
        response = httpx.get(f"http://127.0.0.1:{debug_port}/boom-outside", timeout=5)
    assert response.status_code == 500
    assert "Traceback" in response.json()["message"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 9 + b"]" * 9, "nested deeper than 8"),
        (b"[" * 5000 + b"]" * 5000, "nested deeper than 8"),
        (b'{"a": "\xff\xfe"}', "not valid UTF-8"),
        (b'{"a": ', "not valid JSON"),
    ],
    ids=["deep", "very-deep", "not-utf8", "truncated"],
)
def test_bad_json_is_400_naming_the_problem(port: int, body: bytes, reason: str) -> None:
    big_limit_body = body if len(body) <= LIMIT else None
    if big_limit_body is None:
        with pytest.raises(InvalidInput, match=reason):
            loads_json(body, max_depth=8)
        return
    response = post(port, body, **{"content-type": "application/json"})
    assert response.status_code == 400
    assert reason in response.json()["message"]
    assert_healthy(port)


@pytest.mark.parametrize(
    ("text", "depth"),
    [("1", 0), ("[]", 1), ('{"a": [1, {"b": []}]}', 4), ('["]]]]", [["[[["]]]', 3), ('"[[["', 0),
     ('{"k\\"[": [[1]]}', 3), ('[[1],[2],[[3]]]', 3)],
)
def test_json_depth_ignores_brackets_in_strings(text: str, depth: int) -> None:
    assert json_depth(text.encode()) == depth


def test_json_depth_is_fast_on_large_tensors() -> None:
    tensor = orjson.dumps([[float(i) for i in range(100)] for _ in range(10_000)])  # ~4 MB
    assert loads_json(tensor, max_depth=8) is not None
