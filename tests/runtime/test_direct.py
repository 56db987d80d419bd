"""Inference requests answered below ASGI (``ReplicaProtocol`` + ``runtime.http.DirectExchange``).

The same replica app is served twice, by real uvicorn servers on loopback: once with the replica's
protocol (the inference routes skip the ASGI cycle) and once with the plain protocol (everything crosses
ASGI). Every request of the matrix must get the same status, headers (but the date) and body from both;
the framing cases (100-continue, pipelining, HTTP/1.0, a body cut short) are checked on raw sockets.
"""

from __future__ import annotations

import asyncio
import gzip
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from runtime.app import build_app, replica_protocol
from runtime.config import ReplicaSettings
from runtime.examples import feature_names, logreg_rows
from runtime.http import CoalescingHttpToolsProtocol, DirectExchange
from runtime.loaders import load_model
from runtime.replica import Replica
from runtime.warmup import warm_up
from tests._uvicorn import uvicorn_server

ROW = [round(value, 4) for value in logreg_rows(20, 1)[0].tolist()]
LIMIT = 200_000


@dataclass
class Servers:
    direct: int  # port served by ReplicaProtocol
    asgi: int  # port where every request crosses ASGI
    direct_server: uvicorn.Server
    replica: Replica


@pytest.fixture
async def servers(onnx_model: Path) -> AsyncIterator[Servers]:
    model = load_model(onnx_model)
    settings = ReplicaSettings(max_body_bytes=LIMIT)
    replica = Replica(model, name="logreg", version="1", settings=settings, warm=warm_up(model))
    await replica.start()
    app = build_app(replica)
    try:
        async with (
            uvicorn_server(app, http=replica_protocol(app)) as (direct, direct_server),
            uvicorn_server(app, http=CoalescingHttpToolsProtocol) as (asgi, _),
        ):
            yield Servers(direct, asgi, direct_server, replica)
    finally:
        await replica.stop()
        model.close()


def _json(document: Any) -> bytes:
    return orjson.dumps(document)


_CSV = (",".join(feature_names(20)) + "\n" + ",".join(str(value) for value in ROW) + "\n").encode()
_V2 = {"inputs": [{"name": "float_input", "shape": [1, 20], "datatype": "FP32", "data": ROW}]}
_V2_BINARY_JSON = orjson.dumps(
    {"inputs": [{"name": "float_input", "shape": [1, 20], "datatype": "FP32",
                 "parameters": {"binary_data_size": 80}}],
     "outputs": [{"name": "label", "parameters": {"binary_data": True}}]}
)
_V2_BINARY = _V2_BINARY_JSON + struct.pack("<20f", *ROW)

# (name, method, path, headers, body): every inference answer, good and bad, that a client can get.
MATRIX: list[tuple[str, str, str, dict[str, str], bytes]] = [
    ("inputs", "POST", "/invocations", {"content-type": "application/json"}, _json({"inputs": [ROW]})),
    ("records", "POST", "/invocations", {"content-type": "application/json"},
     _json({"dataframe_records": [dict(zip(feature_names(20), ROW, strict=True))]})),
    ("csv", "POST", "/invocations", {"content-type": "text/csv"}, _CSV),
    ("json with charset", "POST", "/invocations", {"content-type": "application/json; charset=utf-8"},
     _json({"inputs": [ROW]})),
    ("gzip", "POST", "/invocations", {"content-type": "application/json", "content-encoding": "gzip"},
     gzip.compress(_json({"inputs": [ROW, ROW]}))),
    ("deflate", "POST", "/invocations", {"content-type": "application/json", "content-encoding": "deflate"},
     zlib.compress(_json({"inputs": [ROW]}))),
    ("corrupt gzip", "POST", "/invocations",
     {"content-type": "application/json", "content-encoding": "gzip"}, b"not gzip at all"),
    ("unknown encoding", "POST", "/invocations",
     {"content-type": "application/json", "content-encoding": "br"}, b"xx"),
    ("gzip bomb", "POST", "/invocations", {"content-type": "application/json", "content-encoding": "gzip"},
     gzip.compress(b" " * (LIMIT + 10))),
    ("bad json", "POST", "/invocations", {"content-type": "application/json"}, b"{not json"),
    ("wrong shape", "POST", "/invocations", {"content-type": "application/json"}, _json({"inputs": [[1.0]]})),
    ("no content type", "POST", "/invocations", {}, _json({"inputs": [ROW]})),
    ("unsupported media type", "POST", "/invocations", {"content-type": "application/xml"}, b"<a/>"),
    ("too large", "POST", "/invocations", {"content-type": "application/json"}, b" " * (LIMIT + 1)),
    ("v2 json", "POST", "/v2/models/logreg/infer", {"content-type": "application/json"}, _json(_V2)),
    ("v2 versioned", "POST", "/v2/models/logreg/versions/1/infer", {"content-type": "application/json"},
     _json(_V2)),
    ("v2 wrong version", "POST", "/v2/models/logreg/versions/7/infer", {"content-type": "application/json"},
     _json(_V2)),
    ("v2 other model", "POST", "/v2/models/other/infer", {"content-type": "application/json"}, _json(_V2)),
    ("v2 malformed path", "POST", "/v2/models/logreg/x/infer", {}, _json(_V2)),
    ("v2 binary", "POST", "/v2/models/logreg/infer",
     {"content-type": "application/octet-stream",
      "inference-header-content-length": str(len(_V2_BINARY_JSON))}, _V2_BINARY),
    ("v2 bad header length", "POST", "/v2/models/logreg/infer",
     {"content-type": "application/octet-stream", "inference-header-content-length": "999999"}, _V2_BINARY),
    ("v2 bad json", "POST", "/v2/models/logreg/infer", {"content-type": "application/json"}, b"[1, 2"),
    ("GET invocations", "GET", "/invocations", {}, b""),
    ("query string", "POST", "/invocations?x=1", {"content-type": "application/json"},
     _json({"inputs": [ROW]})),
]


def _comparable(answer: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = sorted((name, value) for name, value in answer.headers.multi_items() if name != "date")
    return answer.status_code, headers, answer.content


@pytest.mark.parametrize("case", MATRIX, ids=[case[0] for case in MATRIX])
async def test_the_direct_path_answers_exactly_as_asgi_does(
    servers: Servers, case: tuple[str, str, str, dict[str, str], bytes]
) -> None:
    _, method, path, headers, body = case
    answers = []
    for port in (servers.direct, servers.asgi):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            answers.append(await client.request(method, path, headers=headers, content=body))
    direct, asgi = answers
    assert _comparable(direct) == _comparable(asgi)
    assert "date" in direct.headers
    if case[0] in ("inputs", "csv", "gzip", "v2 json", "v2 binary"):
        assert direct.status_code == 200, direct.text
    if direct.status_code >= 400:
        document = direct.json()
        assert document["error_code"] and document["message"]


async def test_inference_requests_skip_asgi_and_other_routes_do_not(servers: Servers) -> None:
    def cycles() -> list[object]:
        connections = servers.direct_server.server_state.connections
        return [getattr(protocol, "cycle", None) for protocol in connections]

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{servers.direct}") as client:
        answer = await client.post("/invocations", json={"inputs": [ROW]})
        assert answer.status_code == 200
        assert any(isinstance(cycle, DirectExchange) for cycle in cycles())
        assert (await client.get("/v2/health/ready")).status_code == 200  # same connection, through ASGI
        assert not any(isinstance(cycle, DirectExchange) for cycle in cycles())


async def _raw(port: int, data: bytes, *, read_until_close: bool = False, responses: int = 1) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if read_until_close:
            return await asyncio.wait_for(reader.read(), 10)
        received = b""
        while received.count(b"HTTP/1.1 ") < responses or not _complete(received, responses):
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            assert chunk, f"connection closed after {received!r}"
            received += chunk
        return received
    finally:
        writer.close()


def _complete(data: bytes, responses: int) -> bool:
    """Whether ``data`` holds ``responses`` whole responses (each with a content-length)."""
    for _ in range(responses):
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = data[:end].lower()
        start = head.find(b"content-length: ") + len(b"content-length: ")
        length = int(head[start : head.find(b"\r\n", start) if b"\r\n" in head[start:] else len(head)])
        if len(data) < end + 4 + length:
            return False
        data = data[end + 4 + length :]
    return True


def _request(body: bytes, *extra: bytes, version: bytes = b"1.1") -> bytes:
    head = [b"POST /invocations HTTP/" + version, b"host: replica", b"content-type: application/json",
            b"content-length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def test_pipelined_requests_are_answered_in_order_each_in_one_piece(servers: Servers) -> None:
    one, two = _json({"inputs": [ROW]}), _json({"inputs": [ROW, ROW, ROW]})
    received = await _raw(servers.direct, _request(one) + _request(two), responses=2)
    first, second = received.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert len(orjson.loads(first.split(b"\r\n\r\n", 1)[1])["predictions"]["label"]) == 1
    assert len(orjson.loads(second.split(b"\r\n\r\n", 1)[1])["predictions"]["label"]) == 3


async def test_expect_100_continue_gets_the_interim_answer_before_the_body(servers: Servers) -> None:
    body = _json({"inputs": [ROW]})
    reader, writer = await asyncio.open_connection("127.0.0.1", servers.direct)
    try:
        head = _request(body, b"expect: 100-continue")[: -len(body)]
        writer.write(head)
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        status = await asyncio.wait_for(reader.readline(), 10)
        assert status == b"HTTP/1.1 200 OK\r\n"
    finally:
        writer.close()


async def test_http_1_0_closes_the_connection_after_the_answer(servers: Servers) -> None:
    received = await _raw(servers.direct, _request(_json({"inputs": [ROW]}), version=b"1.0"),
                          read_until_close=True)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in received.lower()


async def test_a_chunked_body_over_the_limit_is_refused_with_413(servers: Servers) -> None:
    chunk = b" " * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)) + b"0\r\n\r\n"
    data = (b"POST /invocations HTTP/1.1\r\nhost: replica\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + chunks)
    received = await _raw(servers.direct, data)
    assert received.startswith(b"HTTP/1.1 413 ")
    assert b"exceeds the limit of 200000 bytes" in received


async def test_a_client_that_leaves_mid_body_costs_nothing_and_the_replica_goes_on(servers: Servers) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", servers.direct)
    writer.write(_request(b"{" + b" " * 1000)[:-500])  # the head and half the body
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
    await writer.wait_closed()
    for _ in range(100):
        if servers.replica.admission.in_progress == 0:
            break
        await asyncio.sleep(0.02)
    assert servers.replica.admission.in_progress == 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{servers.direct}") as client:
        assert (await client.post("/invocations", json={"inputs": [ROW]})).status_code == 200
